"""
Presets: the default ("compact") and the named ones resolve to the measured settings and go through the whole lifecycle
"""

import numpy as np
import pytest

from txtai import Embeddings

from txtai_muvera import ColBERT, Muvera, maxsim
from txtai_muvera.tools.commands.info import storage

from checkpoints import build_pylate_checkpoint

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()


def corpus(size, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(6, 20))) for _ in range(size)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=32)


def test_default_is_compact(checkpoint, monkeypatch):
    # Without a preset (and without the tests' environment override) a new index is built compact
    monkeypatch.delenv("TXTAI_MUVERA_PRESET", raising=False)
    embeddings = Embeddings(sparse=checkpoint, content=True)
    embeddings.index(corpus(60))

    config = embeddings.config["scoring"]
    assert config["preset"] == "compact" and config["tokens"] == "adaptive" and config["adaptive"]["bits"] == 2.5 and config["pool"] == 2
    assert config["muvera"]["final"] == 2048 and config["ann"]["index"] == "fastscan" and config["ann"]["quantize"] == "sq8"
    assert config["candidates"] == 1000 and config["dimensions"] == 2048
    assert embeddings.scoring.store.codec.name == "adaptive" and config["fidelity"] == 0.975 and "estimate" not in config

    # Pooled: about half the tokens of the unpooled encoding are stored (the first token is kept, the rest pooled by 2)
    model = ColBERT(checkpoint)
    unpooled = sum(len(x) for x in model.encode(corpus(60), "data"))
    assert embeddings.scoring.store.tokens <= unpooled // 2 + 60


def test_settings_override_preset(checkpoint):
    # Keys a config sets itself win over its preset; a preset's final projection never grows a smaller FDE
    embeddings = Embeddings(sparse={"path": checkpoint, "preset": "compact", "tokens": "int8", "muvera": {"repetitions": 2, "hashes": 2, "projection": 4}})
    embeddings.index(corpus(10))
    config = embeddings.config["scoring"]
    assert config["tokens"] == "int8" and config["pool"] == 2 and config["muvera"]["final"] is None and config["dimensions"] == 2 * 4 * 4

    with pytest.raises(ValueError, match="preset must be one of exact, compact, small, got 'tiny'"):
        Embeddings(sparse={"path": checkpoint, "preset": "tiny"}).index(corpus(3))


@pytest.mark.parametrize("preset, scanned", [("compact", False), ("small", False), ("compact", True)])
def test_lifecycle(checkpoint, preset, scanned, tmp_path):
    # scanned: the FDE index's fast-scan first stage starts at 50 documents instead of its default threshold
    documents, queries = corpus(120), corpus(5, 1)
    ann = {"ann": {"fastscan": {"threshold": 50}}} if scanned else {}
    embeddings = Embeddings(sparse={"path": checkpoint, "preset": preset, "candidates": 200, **ann}, content=True)
    embeddings.index([(i, text, None) for i, text in enumerate(documents)])
    assert (embeddings.scoring.storage.fdes.scan is not None) == scanned

    # Every document is a candidate: results are exact MaxSim over the stored (pooled, compressed) tokens, close to exact MaxSim
    # over the full encodings
    model, muvera = ColBERT(checkpoint), Muvera()
    full = model.encode(documents, "data")
    depth, tolerance = {"compact": (10, 0.1), "small": (30, 0.25)}[preset]
    for query, result in zip(queries, embeddings.batchsearch(queries, 10)):
        tokens = model.encode([query], "query")[0]
        exact = np.array([maxsim(tokens[None], [matrix])[0, 0] for matrix in full])
        assert len(result) == 10 and int(result[0]["id"]) in np.argsort(-exact)[:depth].tolist()
        assert all(abs(row["score"] - exact[int(row["id"])]) < tolerance for row in result)
    assert muvera.config["final"] is None

    # Upsert, delete, save and load keep the trained codec and the results
    embeddings.upsert([(5, "weather sports weather sports", None), (500, "music music history", None)])
    embeddings.delete([7])
    before = embeddings.batchsearch(queries, 5)
    embeddings.save(str(tmp_path / "index"))
    loaded = Embeddings()
    loaded.load(str(tmp_path / "index"))
    assert loaded.count() == 120 and loaded.batchsearch(queries, 5) == before
    assert (loaded.scoring.storage.fdes.scan is not None) == scanned
    if scanned:
        assert loaded.scoring.storage.fdes.scan.ntotal == 120
    assert storage(str(tmp_path / "index"))["fde index"] == {"type": "fastscan", "quantize": "sq8", "first stage": scanned}
    assert loaded.search("select text from txtai where id = '5'")[0]["text"] == "weather sports weather sports"
