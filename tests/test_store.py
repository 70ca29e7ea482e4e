"""
TokenStore module tests
"""

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txtai_muvera.core.maxsim import maxsim, maxsim_flat
from txtai_muvera.core.store import TokenStore

DIM = 8


def matrices(rng, count, low=0, high=10):
    """
    Random L2-normalised token matrices with random lengths.
    """

    results = []
    for _ in range(count):
        x = rng.standard_normal((int(rng.integers(low, high + 1)), DIM)).astype(np.float32)
        results.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))

    return results


def expected(matrix, dtype):
    """
    What the store should hand back for matrix, from the spec.
    """

    if dtype == "float32":
        return matrix
    if dtype == "float16":
        return matrix.astype(np.float16).astype(np.float32)

    rows = []
    for row in matrix:
        scale = np.float32(np.abs(row).max() / 127) or np.float32(1.0)
        rows.append(np.round(row / scale).astype(np.int8).astype(np.float32) * scale)

    return np.array(rows, dtype=np.float32).reshape(-1, DIM)


def check(store, reference, dtype):
    """
    Checks store contents against a dict reference, with gather in a shuffled order and get for each id.
    """

    assert len(store) == len(reference)
    assert store.ids.tolist() == list(reference)
    assert store.tokens == sum(len(x) for x in reference.values())

    ids = list(reference)[::-1]
    tokens, offsets, scale = store.gather(ids)
    assert tokens.dtype == np.dtype(dtype) and offsets.dtype == np.int64 and offsets[0] == 0
    for x, uid in enumerate(ids):
        assert uid in store
        rows = tokens[offsets[x] : offsets[x + 1]].astype(np.float32)
        rows = rows * scale[offsets[x] : offsets[x + 1], None] if scale is not None else rows
        np.testing.assert_allclose(rows, expected(reference[uid], dtype), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(store.get(uid), expected(reference[uid], dtype), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_roundtrip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    store, reference = TokenStore(DIM, dtype), {}

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
    assert loaded.dim == DIM and loaded.dtype == dtype
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
        maxsim_flat(query, tokens, offsets, scale), maxsim([query], [expected(x, dtype) for x in reference.values()])[0], rtol=1e-5, atol=1e-6
    )


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
    with pytest.raises(ValueError, match="'bfloat16'.*float32, float16, int8, residual, pq"):
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
    dtype=st.sampled_from(["float32", "float16", "int8"]),
    steps=st.lists(st.tuples(st.sampled_from(["add", "delete", "save"]), st.integers(0, 5), st.integers(0, 2**31)), max_size=12),
)
def test_property(tmp_path, dtype, steps):
    store, reference, nextid = TokenStore(DIM, dtype), {}, 0
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
