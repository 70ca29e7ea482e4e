"""
txtai integration: Embeddings(sparse=<colbert>) through its whole life, against a brute-force reference
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from txtai import Embeddings
from txtai.app import Application
from txtai.pipeline import Reranker as StockReranker, Similarity
from txtai.scoring import ScoringFactory

import txtai_muvera
from txtai_muvera import ColBERT, Muvera, MuveraScoring, Reranker

from checkpoints import build_pylate_checkpoint

WORDS = (
    "the retrieval model encodes every query and document into token vectors and scores them with maximum similarity "
    "search engines rank passages for questions about science health finance sports music history travel food weather "
    "a small index keeps compact vectors on disk while large collections need approximate neighbours"
).split()

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}


def corpus(size, seed=0):
    """
    Builds a deterministic corpus of short sentences.
    """

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 20))) for _ in range(size)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=48)


def create(checkpoint, **options):
    """
    Creates an Embeddings instance over the checkpoint with small MUVERA settings.
    """

    sparse = {"path": checkpoint, "muvera": dict(MUVERA), **options}
    return Embeddings(sparse=sparse, content=True)


def reference(checkpoint, documents, queries, limit, candidates=100, muvera=None):
    """
    Brute-force reference: ColBERT + Muvera + numpy. Exact FDE inner products pick candidates, exact MaxSim loops rank them.

    Returns:
        list of [(position, score)] per query
    """

    model, encoder = ColBERT(checkpoint), Muvera(**(muvera or MUVERA))
    dtokens, qtokens = model.encode(documents, "data"), model.encode(queries, "query")
    dfdes, qfdes = encoder(dtokens, "data"), encoder(qtokens, "query")

    results = []
    for q, fde in zip(qtokens, qfdes):
        # Candidates by exact FDE inner product, ties by position
        fscores = dfdes @ fde
        order = sorted(range(len(documents)), key=lambda i: (-fscores[i], i))[: max(candidates, limit)]

        # Exact MaxSim with float16-stored documents, plain loops
        scores = {}
        for i in order:
            d = dtokens[i].astype(np.float16).astype(np.float32)
            scores[i] = float(np.mean([max(float(np.dot(t, u)) for u in d) for t in q]))

        results.append(sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:limit])

    return results


def check(results, expected, documents):
    """
    Compares txtai search results with reference results.
    """

    for result, exp in zip(results, expected):
        assert [row["text"] for row in result] == [documents[i] for i, _ in exp]
        assert np.allclose([row["score"] for row in result], [s for _, s in exp], atol=1e-5)


def test_sentence(checkpoint):
    documents, queries = corpus(60), corpus(5, seed=1)
    embeddings = create(checkpoint)
    embeddings.index(documents)

    # Registration rewrote the config to this package's class paths and wrote back resolved settings
    config = embeddings.config["scoring"]
    assert config["method"] == "txtai_muvera.MuveraScoring" and config["terms"] is True and config["backend"] == "faiss"
    assert "vectormethod" not in config
    assert config["muvera"]["repetitions"] == 4 and config["muvera"]["fill"] is False
    assert config["vectors"]["query_length"] == 32 and config["tokens"] == "float16"
    assert embeddings.count() == 60

    # Every candidate re-ranked (candidates > corpus): exact MaxSim over the whole corpus
    check(embeddings.batchsearch(queries, 5), reference(checkpoint, documents, queries, 5), documents)

    # Single and batch search agree
    assert embeddings.search(queries[0], 5) == embeddings.batchsearch(queries[:1], 5)[0]


def test_candidates(checkpoint):
    documents, queries = corpus(80), corpus(6, seed=2)
    embeddings = create(checkpoint, candidates=10)
    embeddings.index(documents)
    check(embeddings.batchsearch(queries, 4), reference(checkpoint, documents, queries, 4, candidates=10), documents)


def test_lifecycle(checkpoint, tmp_path):
    documents = corpus(50)
    queries = corpus(4, seed=3)
    embeddings = create(checkpoint)
    embeddings.index([(f"d{i}", text, None) for i, text in enumerate(documents)])

    # Upsert: replace 5 documents, add 10 new ones
    updates = corpus(15, seed=4)
    rows = [(f"d{i}", updates[i], None) for i in range(5)] + [(f"n{i}", updates[i], None) for i in range(5, 15)]
    embeddings.upsert(rows)

    # Delete
    assert sorted(embeddings.delete(["d7", "d8", "n6"])) == ["d7", "d8", "n6"]

    current = {f"d{i}": text for i, text in enumerate(documents)}
    current.update({uid: text for uid, text, _ in rows})
    for uid in ["d7", "d8", "n6"]:
        del current[uid]

    texts = list(current.values())
    expected = reference(checkpoint, texts, queries, 6)
    check(embeddings.batchsearch(queries, 6), expected, texts)
    assert embeddings.count() == len(current)

    # Deleted documents never surface
    for result in embeddings.batchsearch(queries, 100):
        assert not {row["id"] for row in result} & {"d7", "d8", "n6"}

    # Save, load, identical results; save again over the loaded index
    embeddings.save(str(tmp_path / "index"))
    loaded = Embeddings()
    loaded.load(str(tmp_path / "index"))
    check(loaded.batchsearch(queries, 6), expected, texts)
    loaded.upsert([("x1", "a brand new document about music", None)])
    loaded.save(str(tmp_path / "index"))
    check(
        loaded.batchsearch(queries, 6),
        reference(checkpoint, texts + ["a brand new document about music"], queries, 6),
        texts + ["a brand new document about music"],
    )

    # Re-index starts over
    loaded.index(documents[:10])
    assert loaded.count() == 10
    check(loaded.batchsearch(queries, 3), reference(checkpoint, documents[:10], queries, 3), documents[:10])
    loaded.close()
    embeddings.close()


def test_fresh_process(checkpoint, tmp_path):
    documents, queries = corpus(30), corpus(3, seed=5)
    embeddings = create(checkpoint)
    embeddings.index(documents)
    embeddings.save(str(tmp_path / "index"))
    expected = embeddings.batchsearch(queries, 3)

    # A fresh process loads the index without importing txtai_muvera: the saved config names the classes
    code = (
        "import json, sys\nfrom txtai import Embeddings\ne = Embeddings()\ne.load(sys.argv[1])\n"
        "print(json.dumps(e.batchsearch(json.loads(sys.argv[2]), 3)))"
    )
    tests = os.path.dirname(__file__)
    output = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "index"), json.dumps(queries)], capture_output=True, text=True, check=False, cwd=tests
    )
    assert output.returncode == 0, output.stderr
    assert json.loads(output.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(expected))


def test_archive(checkpoint, tmp_path):
    documents, queries = corpus(30), corpus(3, seed=6)
    embeddings = create(checkpoint)
    embeddings.index(documents)
    embeddings.save(str(tmp_path / "index.tar.gz"))

    loaded = Embeddings()
    loaded.load(str(tmp_path / "index.tar.gz"))
    assert loaded.batchsearch(queries, 3) == embeddings.batchsearch(queries, 3)


def test_nocontent(checkpoint):
    documents, queries = corpus(30), corpus(3, seed=7)
    embeddings = Embeddings(sparse={"path": checkpoint, "muvera": dict(MUVERA)})
    embeddings.index([(f"d{i}", text, None) for i, text in enumerate(documents)])
    expected = reference(checkpoint, documents, queries, 3)
    for result, exp in zip(embeddings.batchsearch(queries, 3), expected):
        assert [uid for uid, _ in result] == [f"d{i}" for i, _ in exp]


def test_rerank_off(checkpoint):
    documents, queries = corpus(40), corpus(3, seed=8)
    embeddings = create(checkpoint, rerank=False)
    embeddings.index(documents)

    # MUVERA only: FDE inner product / (repetitions x query tokens), exact flat search
    model, encoder = ColBERT(checkpoint), Muvera(**MUVERA)
    dfdes = encoder(model.encode(documents, "data"), "data")
    for query, result in zip(queries, embeddings.batchsearch(queries, 5)):
        tokens = model.encode([query], "query")
        scores = dfdes @ encoder(tokens, "query")[0] / (MUVERA["repetitions"] * len(tokens[0]))
        order = np.argsort(-scores, kind="stable")[:5]
        assert [row["text"] for row in result] == [documents[i] for i in order]
        assert np.allclose([row["score"] for row in result], np.maximum(scores[order], 0), atol=1e-5)


def test_no_document_encoding_at_query_time(checkpoint):
    documents, queries = corpus(40), corpus(3, seed=9)
    embeddings = create(checkpoint)
    embeddings.index(documents)

    # Count encoder calls per category on the live model
    model = embeddings.scoring.encoder
    calls, encode = [], model.encode

    def counted(texts, category="data", batch=None):
        calls.append((category, len(texts)))
        return encode(texts, category, batch)

    model.encode = counted
    embeddings.batchsearch(queries, 5)
    Reranker(embeddings)(queries, 5, candidates=20)
    assert calls and all(category == "query" for category, _ in calls)


def test_reranker_pipeline(checkpoint):
    documents, queries = corpus(60), corpus(4, seed=10)
    embeddings = create(checkpoint)
    embeddings.index(documents)

    reranker = Reranker(embeddings)
    check(reranker(queries, 5, candidates=8), reference(checkpoint, documents, queries, 5, candidates=8), documents)
    assert reranker(queries[0], 5, candidates=8) == reranker(queries[:1], 5, candidates=8)[0]

    # Per-call options do not leak into later searches
    check(embeddings.batchsearch(queries, 5), reference(checkpoint, documents, queries, 5), documents)

    with pytest.raises(ValueError, match="candidates"):
        reranker(queries[0], 5, candidates=-3)
    with pytest.raises(ValueError, match="candidates must be a positive integer, got 0"):
        reranker(queries[0], 5, candidates=0)
    with pytest.raises(ValueError, match="nprobe must be a positive integer, got -1"):
        reranker(queries[0], 5, nprobe=-1)


def test_sql(checkpoint):
    documents = corpus(40)
    embeddings = create(checkpoint)
    embeddings.index([{"id": i, "text": text, "group": i % 2} for i, text in enumerate(documents)])

    query = corpus(1, seed=11)[0]
    results = embeddings.search(f"select id, text, score, [group] from txtai where similar('{query}') and [group] = 1", 5)
    assert results and all(row["group"] == 1 for row in results)
    scores = [row["score"] for row in results]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 + 1e-5 for s in scores)


def test_hybrid(checkpoint):
    documents, queries = corpus(40), corpus(2, seed=12)
    embeddings = Embeddings(path=checkpoint, sparse={"path": checkpoint, "muvera": dict(MUVERA)}, content=True)
    embeddings.index(documents)
    assert embeddings.config["scoring"]["method"] == "txtai_muvera.MuveraScoring"
    assert embeddings.scoring.isnormalized()

    for result in embeddings.batchsearch(queries, 5):
        assert len(result) == 5 and all(row["score"] > 0 for row in result)


def test_registration(checkpoint, tmp_path):
    # Idempotent
    txtai_muvera.register()
    txtai_muvera.register()
    assert txtai_muvera.isregistered()

    # A non-late-interaction checkpoint (no dense head) is left to stock txtai's sentence-transformers sparse encoder
    plain = build_pylate_checkpoint(tmp_path / "plain", head=False)
    config = {"method": "sparse", "path": plain}
    assert type(ScoringFactory.create(config).model).__name__ == "SparseSTVectors"
    assert "vectormethod" not in config and "backend" not in config

    # Undo: a late-interaction path is no longer rewritten, and stock txtai fails on it as it always did
    txtai_muvera.unregister()
    try:
        assert not txtai_muvera.isregistered()
        config = {"method": "sparse", "path": checkpoint}
        with pytest.raises(ValueError, match="pylate"):
            ScoringFactory.create(config)
        assert "vectormethod" not in config

        # The explicit class-path form works without registration
        embeddings = Embeddings(
            sparse={"path": checkpoint, "method": "txtai_muvera.MuveraScoring", "terms": True, "muvera": MUVERA},
            content=True,
        )
        embeddings.index(corpus(10))
        assert isinstance(embeddings.scoring, MuveraScoring) and embeddings.count() == 10
    finally:
        txtai_muvera.register()


def test_errors_reach_caller(checkpoint):
    embeddings = create(checkpoint)
    embeddings.index(corpus(10))

    # A bad document fails the upsert in the caller's thread and leaves the index searchable
    with pytest.raises(TypeError):
        embeddings.upsert([("bad", {"text": 12345}, None)])

    assert embeddings.count() == 10
    assert len(embeddings.search(corpus(1, seed=13)[0], 3)) == 3


def test_application_yaml(checkpoint):
    # The shipped YAML as it is, only the model path substituted
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "late-interaction.yml")
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("neuml/colbert-muvera-micro", checkpoint)

    application = Application(text)
    documents = corpus(30)
    application.add([{"id": i, "text": text} for i, text in enumerate(documents)])
    application.index()

    queries = corpus(3, seed=14)
    expected = reference(checkpoint, documents, queries, 3, muvera={"repetitions": 20, "hashes": 5, "projection": 16, "seed": 42})
    results = application.batchsearch(queries, 3)
    for result, exp in zip(results, expected):
        assert [int(row["id"]) for row in result] == [i for i, _ in exp]

    # The re-ranker pipeline declared by class path, with a per-call candidate count
    reranked = application.pipelines["txtai_muvera.Reranker"](queries[0], 3, candidates=5)
    exp = reference(checkpoint, documents, queries[:1], 3, candidates=5, muvera={"repetitions": 20, "hashes": 5, "projection": 16, "seed": 42})[0]
    assert [int(row["id"]) for row in reranked] == [i for i, _ in exp]


def test_stock_similarity_reranker(checkpoint):
    # The model card's pipeline, unchanged: stock Similarity(lateencode=True) + stock Reranker over our index
    documents, query = corpus(40), corpus(1, seed=15)[0]
    embeddings = create(checkpoint)
    embeddings.index(documents)

    similarity = Similarity(path=checkpoint, lateencode=True, gpu=False)
    results = StockReranker(embeddings, similarity)(query, limit=4, factor=5)

    # Brute-force MaxSim with txtai's own encoder over the candidates our index returned, plain loops
    candidates = embeddings.search(query, 20)
    pooling = similarity.lateencoder.model
    qtokens = pooling.encode([query], category="query")[0]
    dtokens = pooling.encode([row["text"] for row in candidates], category="data")
    qtokens = qtokens[np.abs(qtokens).sum(axis=1) > 0]
    scores = []
    for row, tokens in zip(candidates, dtokens):
        tokens = tokens[np.abs(tokens).sum(axis=1) > 0]
        scores.append((row["id"], float(np.mean([max(float(np.dot(t, u)) for u in tokens) for t in qtokens]))))

    expected = sorted(scores, key=lambda x: -x[1])[:4]
    assert [row["id"] for row in results] == [uid for uid, _ in expected]
    assert np.allclose([row["score"] for row in results], [s for _, s in expected], atol=1e-5)


def test_subindex(checkpoint, tmp_path):
    # A late-interaction subindex beside the default index, through save/load and upsert
    documents, queries = corpus(30), corpus(3, seed=16)
    embeddings = Embeddings(content=True, defaults=False, indexes={"late": {"sparse": {"path": checkpoint, "muvera": dict(MUVERA)}}})
    embeddings.index(documents)
    check(embeddings.batchsearch(queries, 3, index="late"), reference(checkpoint, documents, queries, 3), documents)

    embeddings.save(str(tmp_path / "index"))
    loaded = Embeddings()
    loaded.load(str(tmp_path / "index"))
    loaded.upsert([(30, "a brand new document about music", None)])
    texts = documents + ["a brand new document about music"]
    check(loaded.batchsearch(queries, 3, index="late"), reference(checkpoint, texts, queries, 3), texts)


def test_truncation_warning(checkpoint, caplog):
    # Documents cut at the model's document length (48 tokens here) are counted and reported
    embeddings = create(checkpoint)
    with caplog.at_level("WARNING", logger="txtai_muvera.glue.scoring"):
        embeddings.index(["short text", " ".join(["music"] * 200), " ".join(["history"] * 300)])

    assert "2 of 3 documents were cut at the model's document length (48 tokens)" in caplog.text


@pytest.mark.parametrize("tokens", ["float32", "float16", "int8"])
def test_upsert_copies_tokens_exactly(checkpoint, tokens):
    # Appending a pass moves its token rows into the index's store unchanged: the appended rows equal those of an index built
    # from the same documents in one pass (same batch, so the encoder gives identical floats)
    documents = corpus(40)
    parts = create(checkpoint, tokens=tokens)
    parts.index([(i, text, None) for i, text in enumerate(documents[:25])])
    parts.upsert([(i, text, None) for i, text in enumerate(documents) if i >= 25])

    fresh = create(checkpoint, tokens=tokens)
    fresh.index([(i, text, None) for i, text in enumerate(documents[25:])])

    assert parts.scoring.config["tokens"] == tokens and parts.count() == 40
    for x in range(15):
        assert np.array_equal(parts.scoring.store.get(25 + x), fresh.scoring.store.get(x))
