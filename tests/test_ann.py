"""
FDEIndex module tests
"""

import json

import numpy as np
import pytest

from txtai_muvera.core.ann import FDEIndex

DIM = 64


def clustered(rng, count, clusters=20, noise=0.3):
    """
    Clustered vectors: random centers plus noise, the easy-but-realistic case for ANN.
    """

    centers = rng.standard_normal((clusters, DIM)).astype(np.float32)
    vectors = centers[rng.integers(0, clusters, count)] + noise * rng.standard_normal((count, DIM)).astype(np.float32)
    return vectors.astype(np.float32)


def brute(vectors, ids, queries, limit):
    """
    Loop twin: exact inner product top-k with numpy.
    """

    results = []
    for query in queries:
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")[:limit]
        results.append((scores[order], ids[order]))

    return results


def recall(index, vectors, ids, queries, limit, **kwargs):
    """
    Recall@limit of index against brute force.
    """

    _, found = index.search(queries, limit, **kwargs)
    exact = brute(vectors, ids, queries, limit)
    return np.mean([len(set(found[x].tolist()) & set(exact[x][1].tolist())) / limit for x in range(len(queries))])


def test_flat_exact():
    rng = np.random.default_rng(0)
    vectors, queries = rng.standard_normal((500, DIM)).astype(np.float32), rng.standard_normal((30, DIM)).astype(np.float32)
    ids = np.arange(500, dtype=np.int64) * 3 + 7

    index = FDEIndex(DIM, "flat")
    index.index(ids, vectors)
    assert index.count() == 500 and index.config["type"] == "flat"

    scores, found = index.search(queries, 10)
    assert scores.dtype == np.float32 and found.dtype == np.int64 and found.shape == (30, 10)
    for x, (escores, eids) in enumerate(brute(vectors, ids, queries, 10)):
        assert found[x].tolist() == eids.tolist()
        np.testing.assert_allclose(scores[x], escores, rtol=1e-5, atol=1e-5)

    # Batch independence: one query at a time gives the same results
    for x in range(0, 30, 7):
        single = index.search(queries[x], 10)
        assert single[1][0].tolist() == found[x].tolist()

    # Padding when limit > count
    scores, found = index.search(queries[:2], 600)
    assert (found[:, 500:] == -1).all() and np.isneginf(scores[:, 500:]).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_delete_add(tmp_path, kind):
    rng = np.random.default_rng(1)
    vectors = clustered(rng, 1000)
    ids = np.arange(1000, dtype=np.int64)

    index = FDEIndex(DIM, kind)
    index.index(ids[:800], vectors[:800])
    index.add(ids[800:], vectors[800:])
    assert index.count() == 1000

    # Delete the best matches of the queries themselves: they must never come back
    queries = vectors[:50]
    deleted = np.arange(0, 1000, 2)
    index.delete(np.concatenate([deleted, [5000, 6000]]))
    index.delete(deleted[:10])
    assert index.count() == 500

    for limit in (1, 10, 600):
        _, found = index.search(queries, limit, efsearch=64, nprobe=64)
        assert not np.isin(found, deleted).any()
        assert set(found[found >= 0].tolist()) <= set(range(1, 1000, 2))

    with pytest.raises(ValueError, match="already"):
        index.add([1], vectors[:1])

    # Save / load round trip keeps results and deletes
    before = index.search(queries, 10)
    index.save(tmp_path / "ann")
    loaded = FDEIndex.load(tmp_path / "ann")
    after = loaded.search(queries, 10)
    assert loaded.count() == 500 and loaded.config == index.config
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], rtol=1e-6)

    # Save over the same path again, add after load
    loaded.add([2000], vectors[:1] * 10)
    loaded.save(tmp_path / "ann")
    assert FDEIndex.load(tmp_path / "ann").search(vectors[:1] * 10, 1)[1][0, 0] == 2000
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ann"]


@pytest.mark.parametrize(
    "kind, quantize, bound",
    [
        ("hnsw", None, 0.95),
        ("ivf", None, 0.9),
        ("flat", "sq8", 0.9),
        ("hnsw", "sq8", 0.85),
        ("flat", "pq", 0.5),
        ("ivf", "pq", 0.6),
        ("ivf", "sq8", 0.85),
    ],
)
def test_recall(kind, quantize, bound):
    rng = np.random.default_rng(2)
    vectors = clustered(rng, 3000, clusters=50)
    queries = vectors[rng.integers(0, 3000, 40)] + 0.1 * rng.standard_normal((40, DIM)).astype(np.float32)
    ids = np.arange(3000, dtype=np.int64)

    index = FDEIndex(DIM, kind, quantize, pq={"m": 16})
    index.index(ids, vectors)
    value = recall(index, vectors, ids, queries, 10)
    assert value >= bound, f"{kind}/{quantize} recall@10 {value}"


def test_auto_threshold():
    rng = np.random.default_rng(3)
    vectors = clustered(rng, 300)

    index = FDEIndex(DIM, "auto", threshold=200)
    index.index(np.arange(200), vectors[:200])
    assert index.config["type"] == "flat"
    index.add(np.arange(200, 300), vectors[200:])
    assert index.config["type"] == "flat"

    index.index(np.arange(201), vectors[:201])
    assert index.config["type"] == "hnsw" and index.count() == 201


def test_errors_empty(tmp_path):
    with pytest.raises(ValueError, match="'annoy'"):
        FDEIndex(DIM, "annoy")
    with pytest.raises(ValueError, match="'pq4'"):
        FDEIndex(DIM, quantize="pq4")
    with pytest.raises(ValueError, match="divide"):
        FDEIndex(DIM, quantize="pq", pq={"m": 7})
    assert FDEIndex(10240, quantize="pq").pq["m"] == 640

    index = FDEIndex(DIM)
    scores, ids = index.search(np.zeros((2, DIM), np.float32), 5)
    assert (ids == -1).all() and index.count() == 0
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.zeros((2, DIM + 1), np.float32), 5)

    index.save(tmp_path / "empty")
    assert FDEIndex.load(tmp_path / "empty").count() == 0

    index.add([1, 2], np.eye(2, DIM, dtype=np.float32))
    index.save(tmp_path / "ann")
    header = json.loads((tmp_path / "ann" / "header.json").read_text())
    (tmp_path / "ann" / "header.json").write_text(json.dumps({**header, "version": 2}))
    with pytest.raises(ValueError, match="version 2"):
        FDEIndex.load(tmp_path / "ann")
