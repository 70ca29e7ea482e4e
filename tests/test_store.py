"""
TokenStore module tests
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txtai_muvera.core import codecs, files
from txtai_muvera.core.maxsim import maxsim, maxsim_flat
from txtai_muvera.core.store import TokenStore

DIM = 8
CODECS = ["float32", "float16", "int8", "residual", "adaptive", "pq"]


def matrices(rng, count, low=0, high=10):
    """
    Random L2-normalised token matrices with random lengths.
    """

    results = []
    for _ in range(count):
        x = rng.standard_normal((int(rng.integers(low, high + 1)), DIM)).astype(np.float32)
        results.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))

    return results


def expected(matrix, dtype, store=None):
    """
    What the store should hand back for matrix, from the spec (trained codecs: what the store's codec makes of it, the codec
    itself is checked against plain loops in test_codecs).
    """

    if dtype == "float32":
        return matrix
    if dtype == "float16":
        return matrix.astype(np.float16).astype(np.float32)
    if dtype in TRAINED:
        return store.codec.decode(store.codec.encode(np.asarray(matrix, np.float32).reshape(-1, DIM)))

    rows = []
    for row in matrix:
        scale = np.float32(np.abs(row).max() / 127) or np.float32(1.0)
        rows.append(np.round(row / scale).astype(np.int8).astype(np.float32) * scale)

    return np.array(rows, dtype=np.float32).reshape(-1, DIM)


# Trained codecs and their options at DIM, trained once per session on the same sample
TRAINED, STATES = {"residual": {"bits": 2, "centroids": 16}, "adaptive": {"bits": 2.5, "centroids": 16}, "pq": {"m": 4}}, {}


def create(dtype, spill=False):
    """
    An empty store for any codec, trained codecs restored from a state trained once.
    """

    if dtype not in TRAINED:
        return TokenStore(DIM, dtype, spill=spill)

    if dtype not in STATES:
        codec = codecs.create(dtype, DIM, **TRAINED[dtype])
        codec.train(np.concatenate(matrices(np.random.default_rng(99), 100, 5, 10)))
        STATES[dtype] = (codec.config, codec.state())

    codec = codecs.fromconfig(STATES[dtype][0], DIM)
    codec.restore(STATES[dtype][1])
    return TokenStore(DIM, codec, spill=spill)


def check(store, reference, dtype):
    """
    Checks store contents against a dict reference, with gather in a shuffled order and get for each id.
    """

    assert len(store) == len(reference)
    assert store.ids.tolist() == list(reference)
    assert store.tokens == sum(len(x) for x in reference.values())

    ids = list(reference)[::-1]
    tokens, offsets, scale = store.gather(ids)
    assert tokens.dtype == np.dtype("float32" if dtype in TRAINED else dtype) and offsets.dtype == np.int64 and offsets[0] == 0
    for x, uid in enumerate(ids):
        assert uid in store
        rows = tokens[offsets[x] : offsets[x + 1]].astype(np.float32)
        rows = rows * scale[offsets[x] : offsets[x + 1], None] if scale is not None else rows
        np.testing.assert_allclose(rows, expected(reference[uid], dtype, store), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(store.get(uid), expected(reference[uid], dtype, store), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", CODECS)
def test_roundtrip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    store, reference = create(dtype), {}

    # Several batches, including empty documents
    for batch in range(3):
        ids = list(range(batch * 10, batch * 10 + 10))
        data = matrices(rng, 10)
        data[0] = np.zeros((0, DIM), np.float32)
        store.add(ids, data)
        reference.update(zip(ids, data))
    check(store, reference, dtype)

    store.delete([3, 15, 999])
    for uid in (3, 15):
        del reference[uid]
    assert 3 not in store and 999 not in store
    check(store, reference, dtype)

    # Save, load memory-mapped, add after load, save again over the same path
    path = str(tmp_path / "store")
    store.save(path)
    check(store, reference, dtype)
    loaded = TokenStore.load(path)
    assert loaded.dim == DIM and loaded.codec.name == dtype and loaded.codec.config == store.codec.config
    check(loaded, reference, dtype)

    data = matrices(rng, 5)
    loaded.add([40, 41, 42, 43, 44], data)
    reference.update(zip([40, 41, 42, 43, 44], data))
    loaded.delete([0, 41])
    del reference[0], reference[41]
    check(loaded, reference, dtype)

    loaded.save(path)
    check(loaded, reference, dtype)
    check(TokenStore.load(path, mmap=False), reference, dtype)

    # Gathered tokens score the same as the original matrices through maxsim_flat
    query = matrices(rng, 1, 4, 4)[0]
    tokens, offsets, scale = loaded.gather(list(reference))
    np.testing.assert_allclose(
        maxsim_flat(query, tokens, offsets, scale), maxsim([query], [expected(x, dtype, loaded) for x in reference.values()])[0], rtol=1e-5, atol=1e-6
    )

    # The search path's gather keeps codes that are not scored as stored and scores them without decoding: the same scores
    codes, same, scale = loaded.gather(list(reference), decode=False)
    assert isinstance(codes, codecs.Codes) == (not loaded.codec.native) and same.tolist() == offsets.tolist()
    np.testing.assert_allclose(maxsim_flat(query, codes, same, scale), maxsim_flat(query, tokens, offsets, scale), rtol=1e-5, atol=1e-6)

    # Upserts keep the trained state: the state saved after adding is the state trained before
    for key, value in store.codec.state().items():
        np.testing.assert_array_equal(TokenStore.load(path).codec.state()[key], value)


def test_int8_error():
    rng = np.random.default_rng(1)
    store = TokenStore(DIM, "int8")
    data = matrices(rng, 20, 1, 10)
    data.append(np.zeros((3, DIM), np.float32))
    store.add(range(21), data)

    # Per row error is at most half a quantisation step
    for uid, matrix in enumerate(data):
        step = np.abs(matrix).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(store.get(uid) - matrix) <= step / 2 + 1e-7)
    _, _, scale = store.gather([20])
    assert np.all(scale == 1.0)


def test_compaction(tmp_path):
    rng = np.random.default_rng(2)
    store = TokenStore(DIM, "float16")
    store.add(range(100), matrices(rng, 100, 5, 5))
    before = store.nbytes
    assert before >= 500 * DIM * 2

    store.delete(range(50))
    assert store.nbytes == before
    store.save(tmp_path / "store")
    assert store.nbytes == 250 * DIM * 2
    loaded = TokenStore.load(tmp_path / "store")
    assert loaded.nbytes == 250 * DIM * 2 and loaded.tokens == 250
    assert os.path.getsize(tmp_path / "store" / "tokens.npy") < 250 * DIM * 2 + 200


def test_atomic(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "store"
    first = matrices(rng, 10, 1, 8)
    store = TokenStore(DIM, "float32")
    store.add(range(10), first)
    store.save(path)

    # A loaded, memory-mapped store keeps reading its data after a new save replaces the path
    loaded = TokenStore.load(path)
    other = TokenStore(DIM, "float32")
    other.add([100, 101], matrices(rng, 2, 3, 3))
    other.save(path)
    for uid in range(10):
        np.testing.assert_array_equal(loaded.get(uid), first[uid])

    # Saving a loaded store over its own path works too, and leaves no temporary siblings
    loaded.add([10], matrices(rng, 1, 2, 2))
    loaded.save(path)
    again = TokenStore.load(path)
    assert again.ids.tolist() == list(range(11))
    np.testing.assert_array_equal(again.get(3), first[3])
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="'bfloat16'.*float32, float16, int8, residual, adaptive, pq"):
        TokenStore(DIM, "bfloat16")

    rng = np.random.default_rng(4)
    store = TokenStore(DIM, "int8")
    store.add([1, 2], matrices(rng, 2, 1, 3))
    with pytest.raises(ValueError, match=r"\[2\]"):
        store.add([2, 3], matrices(rng, 2))
    with pytest.raises(ValueError, match="Duplicate"):
        store.add([5, 5], matrices(rng, 2))
    with pytest.raises(ValueError, match="shape"):
        store.add([6], [np.zeros((2, DIM + 1))])
    with pytest.raises(KeyError, match="7"):
        store.gather([1, 7])
    assert store.ids.tolist() == [1, 2]

    path = tmp_path / "store"
    store.save(path)

    # Truncated array
    tokens = path / "tokens.npy"
    content = tokens.read_bytes()
    tokens.write_bytes(content[: len(content) - 5])
    with pytest.raises(ValueError, match="tokens.npy"):
        TokenStore.load(path)
    tokens.write_bytes(content)

    # Missing file
    os.rename(path / "scale.npy", tmp_path / "scale.npy")
    with pytest.raises(FileNotFoundError, match="scale.npy"):
        TokenStore.load(path)
    os.rename(tmp_path / "scale.npy", path / "scale.npy")

    # Wrong version and dim mismatch
    header = json.loads((path / "header.json").read_text())
    (path / "header.json").write_text(json.dumps({**header, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        TokenStore.load(path)
    (path / "header.json").write_text(json.dumps({**header, "dim": DIM + 1}))
    with pytest.raises(ValueError, match="tokens.npy"):
        TokenStore.load(path)
    (path / "header.json").write_text("{not json")
    with pytest.raises(ValueError, match="header.json"):
        TokenStore.load(path)
    (path / "header.json").write_text(json.dumps(header))
    assert TokenStore.load(path).ids.tolist() == [1, 2]

    with pytest.raises(FileNotFoundError, match="missing"):
        TokenStore.load(tmp_path / "missing")


def test_unordered_ids():
    rng = np.random.default_rng(5)
    store, reference = TokenStore(DIM, "float32"), {}
    for ids in ([5, 2, 9], [1, 7], [3]):
        data = matrices(rng, len(ids))
        store.add(ids, data)
        reference.update(zip(ids, data))
    store.delete([2])
    del reference[2]
    check(store, reference, "float32")


@settings(derandomize=True, max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(CODECS),
    steps=st.lists(st.tuples(st.sampled_from(["add", "delete", "save"]), st.integers(0, 5), st.integers(0, 2**31)), max_size=12),
)
def test_property(tmp_path, dtype, steps):
    store, reference, nextid = create(dtype, spill=dtype == "int8"), {}, 0
    path = tmp_path / f"store-{dtype}"
    for action, count, seed in steps:
        rng = np.random.default_rng(seed)
        if action == "add":
            ids = list(range(nextid, nextid + count))
            nextid += count
            data = matrices(rng, count)
            store.add(ids, data)
            reference.update(zip(ids, data))
        elif action == "delete" and nextid:
            ids = rng.integers(0, nextid + 2, count).tolist()
            store.delete(ids)
            for uid in ids:
                reference.pop(uid, None)
        elif action == "save":
            store.save(path)
            store = TokenStore.load(path, mmap=bool(seed % 2))
        check(store, reference, dtype)


def test_codecs(tmp_path):
    rng = np.random.default_rng(6)
    data = matrices(rng, 60, 4, 12)

    # The former dtype keyword still works; codec and a different dtype together are refused
    assert TokenStore(DIM, dtype="int8").codec.name == "int8" and TokenStore(DIM, dtype="int8").dtype == "int8"
    with pytest.raises(ValueError, match="not both: codec 'pq', dtype 'int8'"):
        TokenStore(DIM, "pq", dtype="int8")
    with pytest.raises(ValueError, match="Unknown option 'm' for codec 'residual'"):
        TokenStore(DIM, "residual", m=4)

    # A trained codec must be trained before the first add, and only then
    store = TokenStore(DIM, "residual", bits=4, centroids=8)
    assert not store.trained and store.dtype == "float32"
    with pytest.raises(RuntimeError, match="Token codec 'residual' is not trained"):
        store.add([0], data[:1])
    store.train(np.concatenate(data))
    assert store.trained and store.codec.config["centroids"] == 8
    store.add(range(60), data)
    with pytest.raises(RuntimeError, match="already holds 60 documents"):
        store.train(np.concatenate(data))
    assert store.nbytes == store.tokens * (1 + DIM * 4 // 8)

    # Transcoding a float16 pass keeps ids, order and deletions, and encodes the float16 values
    source = TokenStore(DIM, "float16", spill=True)
    source.add(range(100, 160), data)
    source.delete([100, 130])
    sample = source.sample(200, seed=1)
    assert sample.shape == (200, DIM) and sample.dtype == np.float32
    assert source.sample(10**6).shape == (source.tokens, DIM)
    np.testing.assert_array_equal(np.sort(source.sample(10**6), axis=0), np.sort(np.concatenate([source.get(x) for x in source.ids]), axis=0))

    target = TokenStore.transcode(source, "pq", sample=500, m=2)
    # 484 rows are fewer than PQ's 9,984: the config carries the sample count that marks the state untrusted
    assert target.spill and target.trained and target.codec.config == {"name": "pq", "m": 2, "sample": 484} and not target.codec.trusted
    assert target.ids.tolist() == source.ids.tolist()
    for uid in target.ids:
        np.testing.assert_array_equal(target.get(uid), target.codec.decode(target.codec.encode(source.get(uid))))

    target.save(tmp_path / "pq")
    header = json.loads((tmp_path / "pq" / "header.json").read_text())
    assert header["version"] == 2 and header["codec"] == {"name": "pq", "m": 2, "sample": 484} and header["state"] == ["codebooks"]
    assert sorted(header["checksums"]) == ["codec-codebooks.npy", "codes.npy", "ids.npy", "offsets.npy"]

    # Fixed codecs transcode without training
    assert TokenStore.transcode(source, "int8").tokens == source.tokens


def test_nonfinite(tmp_path):
    store = TokenStore(DIM, "float16")
    store.add([1], [np.ones((2, DIM))])

    for value in (np.nan, np.inf, -np.inf):
        bad = np.ones((3, DIM), np.float32)
        bad[1, 2] = value
        with pytest.raises(ValueError, match=r"ids \[7\] contain NaN or infinite values"):
            store.add([5, 6, 7], [np.ones((1, DIM)), np.zeros((0, DIM)), bad])
        assert store.ids.tolist() == [1] and store.tokens == 2

    # Finite values beyond float16's range would be stored as inf
    with pytest.raises(ValueError, match=r"ids \[3\] exceed the float16 range"):
        store.add([3], [np.full((1, DIM), 1e6)])

    store.add([2], [np.ones((1, DIM))])
    path = tmp_path / "store"
    store.save(path)

    # A NaN written into a saved file (with its checksum updated, as a buggy writer would) fails the MaxSim kernel, naming the
    # document's position
    tokens = np.load(path / "tokens.npy")
    tokens[2, 0] = np.nan
    np.save(path / "tokens.npy", tokens)
    header = json.loads((path / "header.json").read_text())
    header["checksums"]["tokens.npy"] = files.digest(path / "tokens.npy")
    (path / "header.json").write_text(json.dumps(header))
    loaded = TokenStore.load(path)
    with pytest.raises(ValueError, match=r"document tokens hold NaN or infinity: 1 documents, first positions \[1\]"):
        maxsim_flat(np.ones((3, DIM), np.float32), *loaded.gather([1, 2]))
    assert loaded.gather([1])[0].shape == (2, DIM)


@pytest.mark.parametrize("dtype", ["float16", "int8", "residual"])
def test_checksums(tmp_path, dtype):
    rng = np.random.default_rng(7)
    store = create(dtype)
    store.add(range(20), matrices(rng, 20, 1, 10))
    path = tmp_path / "store"
    store.save(path)

    header = json.loads((path / "header.json").read_text())
    names = sorted(header["checksums"])
    assert names == sorted(x for x in os.listdir(path) if x.endswith(".npy"))
    for name in names:
        assert header["checksums"][name] == files.digest(path / name)

    # One flipped bit in any array file fails load, naming the file; verify=False skips the check
    for name in names:
        content = (path / name).read_bytes()
        flipped = bytearray(content)
        flipped[len(content) - 1] ^= 0x10
        (path / name).write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match=f"Checksum mismatch in token store file .*{name}"):
            TokenStore.load(path)
        (path / name).write_bytes(content)

    # A checksum missing from the header is an error, not a skipped check
    (path / "header.json").write_text(json.dumps({**header, "checksums": {k: v for k, v in header["checksums"].items() if k != "ids.npy"}}))
    with pytest.raises(ValueError, match="no checksum for ids.npy"):
        TokenStore.load(path)
    (path / "header.json").write_text(json.dumps(header))
    assert TokenStore.load(path).ids.tolist() == list(range(20))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_version1(tmp_path, dtype):
    rng = np.random.default_rng(8)
    data = matrices(rng, 6, 0, 5)

    # The layout txtai-muvera 0.1.0 wrote, by hand: version 1 header without codec or checksums
    path = tmp_path / "old"
    path.mkdir()
    lengths = [len(x) for x in data]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.concatenate(data)
    reference = TokenStore(DIM, dtype)
    reference.add(range(6), data)
    tokens, _, scale = reference.gather(range(6))
    np.save(path / "tokens.npy", tokens)
    if scale is not None:
        np.save(path / "scale.npy", scale)
    np.save(path / "offsets.npy", offsets)
    np.save(path / "ids.npy", np.arange(6, dtype=np.int64))
    header = {"format": "txtai-muvera-tokenstore", "version": 1, "dim": DIM, "dtype": dtype, "documents": 6, "tokens": len(rows), "scale": None}
    (path / "header.json").write_text(json.dumps(header))

    loaded = TokenStore.load(path)
    check(loaded, dict(zip(range(6), data)), dtype)

    # Saves of fixed codecs keep version 1 and the same files, so 0.1.0 readers still load them
    loaded.add([6], matrices(rng, 1, 3, 3))
    loaded.save(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "header.json").read_text())
    assert (
        saved["version"] == 1
        and saved["dtype"] == dtype
        and {k: saved[k] for k in header if k not in ("tokens", "scale")}
        == {k: v for k, v in header.items() if k not in ("tokens", "scale")} | {"documents": 7}
    )
    assert sorted(os.listdir(tmp_path / "new")) == sorted(
        ["header.json", "ids.npy", "offsets.npy", "tokens.npy"] + (["scale.npy"] if dtype == "int8" else [])
    )


# Fills a store on a file system with no room left (a 2 MiB tmpfs, or a 2 MiB file size limit): the spill files and the save
# must fail with OSError and leave the store usable. On 0.1.0 the spill file was a sparse memory map: SIGBUS killed the process.
FULL = """
import os, signal, sys, resource
import numpy as np
from txtai_muvera.core.store import TokenStore

if sys.argv[2] == "limit":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

rng = np.random.default_rng(0)
store, added, error = TokenStore(64, sys.argv[3], spill=True), 0, None
try:
    for batch in range(100):
        store.add(range(added, added + 10), [rng.standard_normal((100, 64)).astype(np.float32) for _ in range(10)])
        added += 10
except OSError as exc:
    error = exc
assert error is not None and len(store) == added > 0, (error, len(store), added)
print("spill", type(error).__name__, error.errno, added, flush=True)

# Usable after the failure: every stored document reads back, smaller batches still fit, the failed save leaves nothing behind
assert store.gather(store.ids)[0].shape == (100 * added, 64)
try:
    store.save(os.path.join(sys.argv[1], "store"))
    print("saved")
except OSError as exc:
    print("save", type(exc).__name__, exc.errno, flush=True)
assert not [x for x in os.listdir(sys.argv[1]) if x.startswith(".store.saving")]
store.delete(store.ids[:-2])
assert store.gather(store.ids)[0].shape == (200, 64)
print("usable", flush=True)
"""


@pytest.mark.parametrize("mode", ["tmpfs", "limit"])
def test_fulldisk(tmp_path, mode):
    script = tmp_path / "full.py"
    script.write_text(FULL)
    directory = tmp_path / "disk"
    directory.mkdir()

    env = {**os.environ, "TMPDIR": str(directory), "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    command = [sys.executable, str(script), str(directory), mode, "float32"]
    if mode == "tmpfs":
        # A real full file system: a small tmpfs mounted in a private user and mount namespace
        mount = f'mount -t tmpfs -o size=2m tmpfs {directory} && exec "$@"'
        command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh"] + command
        if not shutil.which("unshare") or subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], check=False).returncode:
            pytest.skip("unprivileged user and mount namespaces are not available")

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    assert "spill OSError" in result.stdout and "usable" in result.stdout
