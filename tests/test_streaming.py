"""
Writes stream: a stage given the engine's codec encodes tokens as they arrive (trained on its first rows when the codec is
new), the engine adopts or copies those codes at commit without encoding them again, and FDEs wait in float16 when the FDE
index quantizes them. Each fast path is checked against the plain path it replaces.
"""

import numpy as np
import pytest

from txtai import Embeddings

from txtai_muvera.core import codecs, files, staged as stagedmodule
from txtai_muvera.core.filestorage import FileStorage
from txtai_muvera.core.staged import Staged
from txtai_muvera.core.store import TokenStore

from checkpoints import build_pylate_checkpoint

DIM, DIMENSIONS = 16, 32


def tokens(rng, count):
    """
    L2-normalised token rows around a few directions.
    """

    centers = np.random.default_rng(1000).standard_normal((12, DIM))
    x = centers[rng.integers(0, 12, count)] + 0.4 * rng.standard_normal((count, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def batches(count, size, seed=0, start=0):
    """
    Batches of (ids, fdes, matrices) with 2 to 12 tokens per document.
    """

    rng = np.random.default_rng(seed)
    result = []
    for x in range(start, start + count * size, size):
        ids = np.arange(x, x + size, dtype=np.int64)
        result.append((ids, rng.standard_normal((size, DIMENSIONS)).astype(np.float32), [tokens(rng, int(rng.integers(2, 13))) for _ in ids]))

    return result


def codes(store):
    """
    Every live document's codes, in insertion order.
    """

    ids = store.ids
    lengths = store.counts(ids)
    rows = np.arange(lengths.sum()) + np.repeat(store.starts[store.locate(ids)] - (np.cumsum(lengths) - lengths), lengths)
    return ids, store.take(rows)


def residual():
    return codecs.create("residual", DIM, bits=2, seed=3)


def test_stage_trains_on_first_rows(monkeypatch):
    # A stage streams once it holds ROWS float rows: its codec learns from SAMPLE of them, and every row it then holds is coded
    # exactly as a store with that codec would code the original rows (the plain-loop twin)
    monkeypatch.setattr(stagedmodule, "ROWS", 600)
    monkeypatch.setattr(stagedmodule, "SAMPLE", 400)
    data = batches(12, 16)

    stage = Staged(DIM, "float32", codec=residual())
    plain = Staged(DIM, "float32")
    crossed = None
    for x, batch in enumerate(data):
        stage.add(*batch)
        plain.add(*batch)
        if crossed is None and plain.store.tokens >= 600:
            crossed, sample = x, plain.sample(400)
        assert stage.encoded == (crossed is not None)

    assert 0 < crossed < len(data) - 1

    twin = TokenStore(DIM, residual())
    twin.train(sample)
    for ids, _, matrices in data:
        twin.add(ids, matrices)

    assert stage.codec.options == twin.codec.options and np.array_equal(stage.codec.centroids, twin.codec.centroids)
    ids, streamed = codes(stage.store)
    expected = codes(twin)
    assert np.array_equal(ids, expected[0])
    for name, array in expected[1].items():
        assert np.array_equal(streamed[name], array)

    # FDEs and ids are kept in order whatever the tokens' form
    assert np.array_equal(stage.vectors(), np.concatenate([fdes for _, fdes, _ in data]))
    assert np.array_equal(stage.ids, np.concatenate([ids for ids, _, _ in data]))


def test_short_write_stays_float(monkeypatch):
    # A write that ends below ROWS keeps floats: the engine trains on all of it at commit, as it did without a codec
    monkeypatch.setattr(stagedmodule, "ROWS", 10**6)
    stage = Staged(DIM, "float32", codec=residual())
    for batch in batches(3, 8):
        stage.add(*batch)

    assert not stage.encoded and stage.store.codec.name == "float32"


def test_trained_codec_encodes_at_once():
    # A trained codec (the index's own, for an upsert) codes the first batch: the stage never holds floats
    codec = residual()
    codec.train(tokens(np.random.default_rng(5), 2000))
    stage = Staged(DIM, "float16", codec=codec)
    data = batches(2, 8)
    stage.add(*data[0])
    assert stage.encoded and stage.store.codec is codec

    twin = TokenStore(DIM, codec)
    twin.add(data[0][0], data[0][2])
    for name, array in codes(twin)[1].items():
        assert np.array_equal(codes(stage.store)[1][name], array)


def test_float16_fdes():
    # FDEs spooled in float16 come back as float16 from vectors() and as float32 when iterated, each the float16 rounding
    stage = Staged(DIM, "float16", fdes="float16", chunk=5)
    data = batches(2, 8)
    for batch in data:
        stage.add(*batch)

    fdes = np.concatenate([fdes for _, fdes, _ in data])
    assert stage.vectors().dtype == np.float16 and np.array_equal(stage.vectors(), fdes.astype(np.float16))
    iterated = np.concatenate([chunk for _, chunk, _ in stage])
    assert iterated.dtype == np.float32 and np.array_equal(iterated, fdes.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("spill", [False, True])
def test_extend(spill):
    # Copying codes from a store with the same codec equals adding the same matrices (the twin), for an in-memory and a spilled
    # tail (written with file writes, read through the map)
    codec = residual()
    codec.train(tokens(np.random.default_rng(6), 2000))
    first, second = batches(3, 7, seed=1), batches(4, 9, seed=2, start=100)

    target, twin = TokenStore(DIM, codec, spill=spill), TokenStore(DIM, codec)
    for ids, _, matrices in first:
        target.add(ids, matrices)
        twin.add(ids, matrices)

    source = TokenStore(DIM, codec, spill=True)
    for ids, _, matrices in second:
        source.add(ids, matrices)
        twin.add(ids, matrices)
    source.delete([101, 130])
    twin.delete([101, 130])

    target.extend(source)
    ids, copied = codes(target)
    expected = codes(twin)
    assert np.array_equal(ids, expected[0])
    for name, array in expected[1].items():
        assert np.array_equal(copied[name], array)
    for uid in (0, 100, 102, 135):
        assert np.array_equal(target.get(uid), twin.get(uid))

    # Another trained state or ids already stored are refused, and nothing changes
    other = TokenStore(DIM, residual())
    with pytest.raises(ValueError, match="another trained state"):
        target.extend(other)
    with pytest.raises(ValueError, match="already in the token store"):
        target.extend(source)
    assert np.array_equal(codes(target)[0], ids)


def observe(storage):
    """
    Ids, decoded tokens and FDE search results of a FileStorage.
    """

    ids = storage.ids()
    tokens, offsets, _ = storage.gather(ids)
    queries = np.random.default_rng(9).standard_normal((3, DIMENSIONS)).astype(np.float32)
    scores, found = storage.fdes.search(queries, 10)
    return ids.tolist(), np.asarray(tokens).round(6).tolist(), offsets.tolist(), found.tolist(), scores.round(4).tolist()


def streamed(config, data, current=None):
    """
    A stage set up as FileStorage.staging asks, holding data.
    """

    codec, spool = FileStorage.staging(config, DIM, current)
    stage = Staged(DIM, "float16", codec=codec, fdes=spool)
    for batch in data:
        stage.add(*batch)
    return stage


def test_commit_adopts_and_copies(monkeypatch):
    # A first sample of at least codecs.RESIDUAL rows: the codec is trusted
    monkeypatch.setattr(stagedmodule, "ROWS", 700)
    config = {"ann": {"index": "flat", "quantize": "sq8"}, "tokens": "residual", "residual": {"bits": 2, "seed": 3}}

    # First write: the stage trains the configured codec on its first rows and the engine adopts the stage's store as it is
    stage = streamed(config, batches(10, 16))
    assert stage.encoded and stage.codec.trusted and stage.vectors().dtype == np.float16
    storage = FileStorage(config, DIMENSIONS, DIM)
    storage.apply(np.zeros(0, dtype=np.int64), stage)
    assert storage.store is stage.store and storage.count() == 160

    # An upsert stages codes of the index's codec and the commit copies them: nothing is encoded at commit
    stage = streamed(config, batches(2, 16, seed=4, start=160), current=storage)
    assert stage.store.codec is storage.store.codec
    encodes = []
    original = storage.store.codec.encode
    monkeypatch.setattr(storage.store.codec, "encode", lambda rows: encodes.append(len(rows)) or original(rows))
    storage.apply(np.array([3, 4]), stage)
    assert not encodes and storage.count() == 190

    # The upserted documents decode as the codec codes their original rows
    for uid, matrix in zip(range(160, 192), [m for _, _, ms in batches(2, 16, seed=4, start=160) for m in ms]):
        assert np.array_equal(storage.store.get(uid), storage.store.codec.decode(storage.store.codec.encode(matrix)))

    # A copy that fails half way leaves the index exactly as it was
    before = observe(storage)
    stage = streamed(config, batches(3, 16, seed=5, start=200), current=storage)
    calls, append = [], TokenStore.append

    def failing(self, *args):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("injected")
        return append(self, *args)

    monkeypatch.setattr(TokenStore, "append", failing)
    monkeypatch.setattr("txtai_muvera.core.store.CHUNK", 16)
    with pytest.raises(OSError, match="injected"):
        storage.apply(np.array([5]), stage)
    assert len(calls) == 2 and observe(storage) == before


def test_untrusted_codec_stages_floats():
    # A codec trained on a tiny first write is retrained later from decoded and new rows: its upserts stage floats
    config = {"ann": {"index": "flat"}, "tokens": "residual", "residual": {"bits": 2}}
    storage = FileStorage(config, DIMENSIONS, DIM)
    rng = np.random.default_rng(8)
    first = Staged(DIM, "float32")
    first.add(np.array([0]), rng.standard_normal((1, DIMENSIONS)).astype(np.float32), [tokens(rng, 3)])
    storage.apply(np.zeros(0, dtype=np.int64), first)
    assert not storage.store.codec.trusted

    codec, spool = FileStorage.staging(config, DIM, storage)
    assert codec is None and spool == "float32"


def test_embeddings(tmp_path, monkeypatch):
    # Through txtai: a first index streams (the codec learns from the stage's first rows and the commit adopts the stage's
    # codes), upserts copy codes, and search, save and load behave as without streaming: every document finds itself first
    monkeypatch.setattr(stagedmodule, "ROWS", 700)
    model = build_pylate_checkpoint(str(tmp_path / "model"), seed=5)
    words = ["ocean", "forest", "desert", "river", "mountain", "city", "garden", "island", "valley", "harbor", "glacier", "canyon"]
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, 6)) + f" item{x}" for x in range(300)]

    commits, build = [], FileStorage.build

    def recording(self, batches):
        build(self, batches)
        commits.append((batches.encoded, self.store is batches.store))

    monkeypatch.setattr(FileStorage, "build", recording)
    embeddings = Embeddings(sparse={"path": model, "tokens": "residual", "residual": {"bits": 4}, "ann": {"index": "flat", "quantize": "sq8"}, "batch": 32}, content=True)
    embeddings.index([(f"d{x}", text, None) for x, text in enumerate(texts[:250])])
    store = embeddings.scoring.store
    assert commits == [(True, True)] and 700 <= store.codec.sample < store.tokens

    embeddings.upsert([(f"d{x}", text, None) for x, text in enumerate(texts[240:], 240)])
    assert embeddings.count() == 300 and embeddings.scoring.store.codec is store.codec

    embeddings.save(str(tmp_path / "index"))
    loaded = Embeddings()
    loaded.load(str(tmp_path / "index"))
    for x in (0, 50, 245, 299):
        assert loaded.search(texts[x], 1)[0]["id"] == f"d{x}"


def test_spilled_empty_documents():
    # A spilled tail takes documents without tokens between documents with tokens, in either codec form
    codec = residual()
    codec.train(tokens(np.random.default_rng(6), 2000))
    for store in (TokenStore(DIM, "float16", spill=True), TokenStore(DIM, codec, spill=True)):
        rng = np.random.default_rng(2)
        first, last = tokens(rng, 5), tokens(rng, 3)
        store.add([0], [first])
        store.add([1, 2], [np.zeros((0, DIM), np.float32), np.zeros((0, DIM), np.float32)])
        store.add([3], [last])
        assert store.counts([0, 1, 2, 3]).tolist() == [5, 0, 0, 3]
        expected = last.astype(np.float16).astype(np.float32) if store.codec.name == "float16" else codec.decode(codec.encode(last))
        assert np.array_equal(store.get(3), expected)


@pytest.mark.parametrize("mode", ["r+", "c"])
def test_evict(tmp_path, mode):
    # Dropping mapped pages loses nothing: shared maps read back from the page cache, copy-on-write maps are left alone
    path = tmp_path / "rows.npy"
    np.save(path, np.arange(4096 * 4, dtype=np.float32))
    array = np.load(path, mmap_mode=mode)
    array[5] = -1.0
    files.evict(array[10:20])
    assert array[5] == -1.0 and array[4096 * 3] == 4096 * 3
