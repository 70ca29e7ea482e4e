"""
The file engine's commit is all or nothing: a failure in any step of FileStorage.apply (codec training, token store add, FDE
add, token store delete, FDE delete, the PQ rebuild) leaves every id, token code and search result exactly as before, and
the next writes match an index that never failed. A codec trained on too few rows is retrained once the index holds enough.
"""

import numpy as np
import pytest

from txtai import Embeddings

from txtai_muvera import transaction
from txtai_muvera.core import codecs
from txtai_muvera.core.ann import FDEIndex
from txtai_muvera.core.filestorage import FileStorage
from txtai_muvera.core.maxsim import maxsim_flat
from txtai_muvera.core.staged import Staged
from txtai_muvera.core.store import TokenStore

from checkpoints import build_pylate_checkpoint

# Token dimension, FDE dimensions
DIM, DIMENSIONS = 16, 32

# Token setups: float16, residual trained on a first write large enough to be trusted, residual trained on a tiny first write
# (untrusted: the failing write is the one that retrains it)
TOKENS = {"float16": 200, "residual": 200, "retrain": 20}

STEPS = ["train", "store.add", "fdes.add", "store.delete", "fdes.delete"]


def tokens(rng, count):
    """
    L2-normalised token rows around a few directions, like real token vectors.
    """

    centers = np.random.default_rng(1000).standard_normal((12, DIM))
    x = centers[rng.integers(0, 12, count)] + 0.4 * rng.standard_normal((count, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def batch(ids, seed, low=2, high=12):
    """
    A write's documents: ids, random FDEs and token matrices of low to high tokens.

    Returns:
        (ids, fdes, matrices)
    """

    rng = np.random.default_rng(seed)
    ids = np.asarray(ids, dtype=np.int64)
    fdes = rng.standard_normal((len(ids), DIMENSIONS)).astype(np.float32)
    return ids, fdes, [tokens(rng, int(rng.integers(low, high + 1))) for _ in ids]


def stage(documents, chunk=16):
    """
    Stages documents in chunks of `chunk`, so that the token store adds a write in several calls.
    """

    staged = Staged(DIM, "float32", chunk=chunk)
    staged.add(*documents)
    return staged


def engine(index, setup, quantize=None):
    """
    A FileStorage engine with its first write.

    Args:
        index: FDE index type
        setup: key of TOKENS
        quantize: FDE quantization (pq: trained only once 240 vectors are in)

    Returns:
        FileStorage
    """

    ann = {"index": index, "quantize": quantize}
    if quantize == "pq":
        ann["pq"] = {"m": 4, "nbits": 4, "train": 240}
    config = {"ann": ann, "tokens": "float16" if setup == "float16" else "residual", "residual": {"bits": 2}}
    storage = FileStorage(config, DIMENSIONS, DIM)
    storage.apply(np.zeros(0, dtype=np.int64), stage(batch(range(TOKENS[setup]), 0)))
    assert storage.store.codec.trusted == (setup != "retrain")
    return storage


def observe(storage):
    """
    Everything a reader sees: count, ids in order, token codes of every id, FDE search results (ids and scores).
    """

    ids = storage.ids()
    gathered, offsets, scale = storage.gather(ids, decode=False)
    codes = gathered.codes if isinstance(gathered, codecs.Codes) else {"tokens": np.asarray(gathered)}
    queries = np.random.default_rng(5).standard_normal((10, DIMENSIONS)).astype(np.float32)
    scores, found = storage.fdes.search(queries, 20, efsearch=400, nprobe=64)

    return {
        "count": (storage.count(), len(storage.store), storage.store.tokens),
        "ids": ids.tolist(),
        "codes": {name: part.tobytes() for name, part in codes.items()},
        "offsets": offsets.tolist(),
        "scale": None if scale is None else scale.tobytes(),
        "codec": storage.store.codec.config,
        "search": (scores.tobytes(), found.tolist()),
    }


def nothing():
    """
    A write without documents (deletes only).
    """

    return Staged(DIM, "float32")


def write(storage, seed, replace, new, chunk=16):
    """
    An upsert: replaces `replace` ids by new ids (deletes the old, adds the new) and adds documents under new ids.
    """

    storage.apply(np.asarray(replace, dtype=np.int64), stage(batch(new, seed), chunk))


def inject(storage, step, monkeypatch):
    """
    Makes one step of the engine's next write raise.

    Args:
        storage: FileStorage
        step: one of STEPS
        monkeypatch: pytest monkeypatch
    """

    def fail(cls, name, after=0):
        original, calls = getattr(cls, name), []

        def failing(self, *args, **kwargs):
            calls.append(1)
            if len(calls) > after:
                raise OSError(28, "No space left on device")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, failing)

    if step == "train":
        fail(codecs.Residual, "train")
    elif step == "store.add":
        # The third chunk: two chunks of the write are in the store when it fails
        fail(TokenStore, "add", after=2)
    elif step == "store.delete":
        fail(TokenStore, "delete")
    elif step == "fdes.add":
        fail(FDEIndex, "add")
    else:
        fail(FDEIndex, "delete")

    assert storage.store is not None


def cases():
    """
    (step, index, setup) for every step of every setup that runs it: only a codec that is not trusted trains in a write.
    """

    return [(step, index, setup) for setup in TOKENS for index in ("flat", "hnsw", "ivf") for step in STEPS if step != "train" or setup == "retrain"]


@pytest.mark.parametrize("step,index,setup", cases())
def test_failed_step(step, index, setup, monkeypatch):
    storage, reference = engine(index, setup), engine(index, setup)
    before = observe(storage)
    assert before == observe(reference)

    # The failing write replaces 30 ids and adds 90 documents, 16 to a chunk
    inject(storage, step, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write(storage, 1, range(0, 60, 2), range(1000, 1120))
    monkeypatch.undo()
    assert observe(storage) == before

    # The same write again, then a delete, give what an engine that never failed gives
    for engine_ in (storage, reference):
        write(engine_, 1, range(0, 60, 2), range(1000, 1120))
        engine_.apply(np.arange(1000, 1010), nothing())
    assert observe(storage) == observe(reference)
    assert storage.count() == len(before["ids"]) - len(set(range(0, 60, 2)) & set(before["ids"])) + 120 - 10
    if setup == "retrain":
        assert storage.store.codec.trusted


@pytest.mark.parametrize("index", ["flat", "hnsw"])
@pytest.mark.parametrize("step", ["build", "fdes.delete"])
def test_failed_pq_rebuild(index, step, monkeypatch):
    # 200 FDEs, fewer than the 240 PQ trains on: stored uncompressed until a write reaches 240, which rebuilds the index
    # compressed inside FDEIndex.add (flat: 200 + 60 added, then deletes; hnsw: 20 deleted first, then 180 + 60)
    storage, reference = engine(index, "float16", "pq"), engine(index, "float16", "pq")
    assert storage.fdes.trained is False and storage.count() == 200
    before = observe(storage)

    # build: the rebuild itself fails once the new backend is built; fdes.delete: a flat index deletes after the rebuild
    original = FDEIndex.build if step == "build" else FDEIndex.delete

    def failing(self, *args, **kwargs):
        if step == "build":
            original(self, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FDEIndex, step.split(".")[-1], failing)
    with pytest.raises(OSError, match="No space left"):
        write(storage, 3, range(0, 20), range(500, 560))
    monkeypatch.undo()
    assert observe(storage) == before and storage.fdes.trained is False

    for engine_ in (storage, reference):
        write(engine_, 3, range(0, 20), range(500, 560))
        engine_.apply(np.arange(500, 505), nothing())
    assert storage.fdes.trained is True and observe(storage) == observe(reference)


@pytest.mark.parametrize("documents", [0, 3])
def test_failed_first_training(documents, tmp_path, monkeypatch):
    # An index built without tokens (no documents, or only empty ones) trains its codec in the first write that has tokens: a
    # failure there keeps it untrained
    storage = FileStorage({"ann": {"index": "flat"}, "tokens": "residual"}, DIMENSIONS, DIM)
    storage.apply(np.zeros(0, dtype=np.int64), stage(batch(range(documents), 0, 0, 0)))
    assert not storage.store.trained and storage.count() == documents

    # Saved and loaded untrained
    storage.save(tmp_path)
    storage.load(tmp_path)
    before = observe(storage)

    for step in ("train", "store.add", "fdes.add") + (("fdes.delete",) if documents else ()):
        inject(storage, step, monkeypatch)
        with pytest.raises(OSError, match="No space left"):
            write(storage, 1, [0], range(10, 110))
        monkeypatch.undo()
        assert observe(storage) == before and not storage.store.trained

    write(storage, 1, [0], range(10, 110))
    assert storage.store.trained and storage.count() == max(documents - 1, 0) + 100


def test_retrain(tmp_path):
    # A first write of one empty document and a three-token one trains a residual codec on 3 rows: 1 centroid, not trusted
    rng = np.random.default_rng(8)
    first = [np.zeros((0, DIM), np.float32), tokens(rng, 3)]
    storage = FileStorage({"ann": {"index": "flat"}, "tokens": "residual", "residual": {"bits": 2}}, DIMENSIONS, DIM)
    storage.apply(np.zeros(0, dtype=np.int64), stage((np.array([0, 1]), rng.standard_normal((2, DIMENSIONS)).astype(np.float32), first)))
    untrusted = storage.store.codec
    assert untrusted.options["centroids"] == 1 and untrusted.sample == 3 and not untrusted.trusted

    # The mark survives save and load
    (tmp_path / "small").mkdir()
    storage.save(tmp_path / "small")
    storage = FileStorage(storage.config, DIMENSIONS, DIM)
    storage.load(tmp_path / "small")
    assert storage.store.codec.config == {**untrusted.config, "sample": 3} and not storage.store.codec.trusted

    # A write that still leaves the index below codecs.RESIDUAL tokens keeps the codec
    ids, fdes, matrices = batch(range(2, 12), 9)
    storage.apply(np.zeros(0, dtype=np.int64), stage((ids, fdes, matrices)))
    assert storage.store.tokens < codecs.RESIDUAL and storage.store.codec.sample == 3
    old, rows = [1, *ids.tolist()], np.concatenate([first[1], *matrices])
    before = cosine(np.concatenate([storage.store.get(uid) for uid in old]), rows)

    # A write that brings it to enough tokens retrains the codec on all of them and re-encodes the stored documents
    new = batch(range(100, 300), 10)
    storage.apply(np.zeros(0, dtype=np.int64), stage(new))
    codec = storage.store.codec
    assert codec.trusted and codec.sample == storage.store.tokens >= codecs.RESIDUAL and codec.options["centroids"] >= 16
    assert "sample" not in codec.config

    # Stored documents decode far closer to their float originals than the untrusted codec makes them. Documents stored before
    # are re-encoded from their decoded rows, which compounds two codecs' errors: they stay about where they were
    originals = dict(zip([*old, *new[0].tolist()], [first[1], *matrices, *new[2]]))
    everything = np.concatenate(list(originals.values()))
    stored = np.concatenate([storage.store.get(uid) for uid in originals])
    assert cosine(stored, everything) > cosine(untrusted.decode(untrusted.encode(everything)), everything) + 0.2
    assert cosine(np.concatenate([storage.store.get(uid) for uid in old]), rows) > before - 0.03

    # MaxSim with a new document's own tokens as the query: what ranks first over the float originals is in the top 3 over the
    # codes. Documents stored before keep the error of the codec that first encoded them: their float originals are gone
    order = storage.ids()
    gathered, offsets, scale = storage.gather(order)
    exact = np.concatenate([originals.get(uid, np.zeros((0, DIM), np.float32)) for uid in order.tolist()])
    bounds = np.concatenate([[0], np.cumsum([len(originals.get(uid, ())) for uid in order.tolist()])])
    for uid in [100, 150, 250, 299]:
        scores, expected = maxsim_flat(originals[uid], gathered, offsets, scale), maxsim_flat(originals[uid], exact, bounds)
        assert order[np.argmax(expected)] in order[np.argsort(-scores)[:3]]

    # Saved and loaded: trusted, and the header has no mark
    (tmp_path / "large").mkdir()
    storage.save(tmp_path / "large")
    loaded = FileStorage(storage.config, DIMENSIONS, DIM)
    loaded.load(tmp_path / "large")
    assert loaded.store.codec.trusted and loaded.store.codec.config == codec.config and observe(loaded) == observe(storage)


@pytest.mark.parametrize("step", ["train", "store.add", "fdes.delete"])
def test_failed_retrain(step, monkeypatch):
    storage = engine("flat", "retrain")
    before, codec = observe(storage), storage.store.codec

    inject(storage, step, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write(storage, 1, range(5), range(1000, 1200))
    monkeypatch.undo()
    assert observe(storage) == before and storage.store.codec is codec and not codec.trusted

    write(storage, 1, range(5), range(1000, 1200))
    assert storage.store.codec.trusted and storage.store.codec.options["centroids"] > codec.options["centroids"]


def cosine(a, b):
    """
    Mean cosine between matching rows.
    """

    return float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


# Through txtai: transaction.upsert and transaction.delete with a failure in the engine's deletes

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()

QUERIES = [
    "music history science",
    "weather sports food",
    "token vector search",
    "retrieval model",
    "index score",
    "travel",
    "food food",
    "science token",
    "history vector query",
    "sports weather weather",
]


def corpus(size, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 8))) for _ in range(size)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=16)


def state(embeddings):
    """
    Count, every content row and 10 searches' results with scores.
    """

    rows = embeddings.search("select id, text from txtai order by id limit 100000")
    return embeddings.count(), sorted((row["id"], row["text"]) for row in rows), embeddings.batchsearch(QUERIES, 10)


@pytest.mark.parametrize("tokens", ["float16", "residual"])
@pytest.mark.parametrize("target", ["FDEIndex.delete", "TokenStore.delete"])
def test_txtai(checkpoint, tokens, target, monkeypatch):
    sparse = {"path": checkpoint, "muvera": {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}, "candidates": 1000, "tokens": tokens}
    embeddings = Embeddings({"sparse": sparse, "content": True, "batch": 64})
    embeddings.index([(f"d{i}", text, None) for i, text in enumerate(corpus(200))])
    before = state(embeddings)

    cls, name = (FDEIndex if target.startswith("FDE") else TokenStore), target.split(".")[1]
    monkeypatch.setattr(cls, name, lambda *args: (_ for _ in ()).throw(OSError("injected")))

    # An upsert that replaces 4 documents and adds 4, and a delete
    with pytest.raises(OSError, match="injected"):
        transaction.upsert(
            embeddings, [(f"d{i}", text, None) for i, text in zip(range(4), corpus(4, 1))] + [(f"n{i}", "weather music", None) for i in range(4)]
        )
    assert state(embeddings) == before
    with pytest.raises(OSError, match="injected"):
        transaction.delete(embeddings, ["d5", "d6"])
    assert state(embeddings) == before

    # Later writes work
    monkeypatch.undo()
    transaction.upsert(embeddings, [("d3", "science science token", None), ("late", "weather weather sports", None)])
    transaction.delete(embeddings, ["d5"])
    assert embeddings.count() == 200
    assert embeddings.search("weather weather sports", 1)[0]["id"] == "late"
    assert embeddings.search("select text from txtai where id = 'd3'")[0]["text"] == "science science token"
    assert sorted(embeddings.scoring.storage.ids().tolist()) == sorted(
        row["indexid"] for row in embeddings.search("select indexid from txtai limit 1000")
    )
