"""
Pooling module tests
"""

import threading

import numpy as np
import pytest

from scipy.cluster.hierarchy import fcluster, linkage
from threadpoolctl import threadpool_info

from txtai_muvera.core import pooling
from txtai_muvera.core.pooling import pool

DIM = 8


def documents(rng, count, low=0, high=30):
    """
    Random L2-normalised token matrices with random lengths.
    """

    results = []
    for _ in range(count):
        x = rng.standard_normal((int(rng.integers(low, high + 1)), DIM)).astype(np.float32)
        results.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))

    return results


def slowpool(matrix, factor, protected, normalize=False):
    """
    Plain-loop twin: agglomerates the unprotected tokens one merge at a time with Ward's update over cosine distances until
    max(1, n // factor) clusters remain, then averages each cluster.
    """

    head, rows = matrix[:protected], matrix[protected:]
    n = len(rows)
    target = max(n // factor, 1)
    if target >= n:
        return matrix

    members = {i: [i] for i in range(n)}
    distance = {}
    for i in range(n):
        for j in range(i + 1, n):
            distance[(i, j)] = max(1.0 - float(np.dot(rows[i].astype(np.float64), rows[j].astype(np.float64))), 0.0)

    def get(a, b):
        return distance[(min(a, b), max(a, b))]

    nextid = n
    while len(members) > target:
        # Closest pair of current clusters
        a, b = min(((a, b) for a in members for b in members if a < b), key=lambda pair: get(*pair))
        na, nb = len(members[a]), len(members[b])
        for c in members:
            if c not in (a, b):
                nc = len(members[c])
                total = na + nb + nc
                value = ((na + nc) * get(a, c) ** 2 + (nb + nc) * get(b, c) ** 2 - nc * get(a, b) ** 2) / total
                distance[(c, nextid)] = np.sqrt(max(value, 0.0))
        members[nextid] = members.pop(a) + members.pop(b)
        nextid += 1

    means = [np.mean([rows[i].astype(np.float64) for i in group], axis=0) for group in members.values()]
    means = [x / np.linalg.norm(x) for x in means] if normalize else means
    return np.concatenate([head, np.array(means, dtype=np.float32).reshape(-1, matrix.shape[1])])


def ordered(matrix):
    """
    Rows sorted lexicographically, to compare clusterings whose cluster order differs.
    """

    return matrix[np.lexsort(matrix.T[::-1])]


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("protected", [0, 1])
@pytest.mark.parametrize("normalize", [False, True])
def test_twin(factor, protected, normalize):
    rng = np.random.default_rng(factor * 10 + protected)
    data = documents(rng, 25)
    pooled = pool(data, factor, protected, normalize)
    for matrix, result in zip(data, pooled):
        expected = slowpool(matrix, factor, protected, normalize)
        assert result.dtype == np.float32 and result.shape == expected.shape

        # Protected rows come first, unchanged; the pooled rows are the twin's clusters, in any order
        np.testing.assert_array_equal(result[:protected], matrix[:protected])
        np.testing.assert_allclose(ordered(result[protected:]), ordered(expected[protected:]), atol=1e-6)

        n = max(len(matrix) - protected, 0)
        clusters = max(n // factor, 1)
        assert len(result) == (len(matrix) if clusters >= n else min(len(matrix), protected) + clusters)


def test_identity():
    rng = np.random.default_rng(1)
    data = documents(rng, 10)
    data.append(np.ones((3, DIM), dtype=np.float64))
    for matrix, result in zip(data, pool(data, 1)):
        assert result.dtype == np.float32
        np.testing.assert_array_equal(result, matrix.astype(np.float32))


def test_batch_independence():
    rng = np.random.default_rng(2)
    data = documents(rng, 12, 5, 40)
    together = pool(data, 3)
    for x, matrix in enumerate(data):
        np.testing.assert_array_equal(pool([matrix], 3)[0], together[x])


def test_shapes():
    rng = np.random.default_rng(3)

    # Empty, one-token and two-token documents: nothing to lose stays as is
    empty, one, two = np.zeros((0, DIM), np.float32), documents(rng, 1, 1, 1)[0], documents(rng, 1, 2, 2)[0]
    results = pool([empty, one, two], 2)
    assert results[0].shape == (0, DIM) and results[1].shape == (1, DIM) and results[2].shape == (2, DIM)

    # protected=0 pools every token: two tokens into one mean
    np.testing.assert_allclose(pool([two], 2, protected=0, normalize=False)[0], two.mean(axis=0, keepdims=True), atol=1e-7)

    # Identical tokens tie at distance 0: the cut keeps them in one cluster, their own value (as PyLate's fcluster cut does)
    same = np.repeat(one, 9, axis=0)
    np.testing.assert_allclose(pool([same], 4, protected=0)[0], one, atol=1e-6)

    # Means are re-normalised by default; PyLate's plain mean of two orthogonal unit tokens has norm sqrt(1/2)
    orthogonal = np.eye(DIM, dtype=np.float32)[:2]
    assert np.isclose(np.linalg.norm(pool([orthogonal], 2, protected=0)[0]), 1.0)
    assert np.isclose(np.linalg.norm(pool([orthogonal], 2, protected=0, normalize=False)[0]), np.sqrt(0.5))

    # A document of 101 tokens at factor 2 keeps 1 + 50
    assert pool(documents(rng, 1, 101, 101), 2)[0].shape == (51, DIM)


def test_errors():
    with pytest.raises(ValueError, match="factor must be an integer >= 1, got 0"):
        pool([], 0)
    with pytest.raises(ValueError, match="factor.*2.5"):
        pool([], 2.5)
    with pytest.raises(ValueError, match="factor.*True"):
        pool([], True)
    with pytest.raises(ValueError, match="protected must be an integer >= 0, got -1"):
        pool([], 2, protected=-1)
    with pytest.raises(ValueError, match="normalize must be True or False, got 1"):
        pool([], 2, normalize=1)

    bad = np.ones((4, DIM), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="Matrix 1 contains NaN"):
        pool([np.ones((2, DIM)), bad], 2)
    with pytest.raises(ValueError, match=r"Matrix 0 has shape \(4,\)"):
        pool([np.ones(4)], 2)


def reference(matrix, factor, protected, normalize=True):
    """
    Straightforward twin of the fast path: scipy's public linkage("ward") on 1 - dot distances (float64, every pair by einsum,
    clipped at 0), fcluster "maxclust", then each cluster's mean in label order. Returns the pooled matrix, the labels and the
    condensed distances (None, None when nothing is pooled).
    """

    head, rows = matrix[:protected], matrix[protected:].astype(np.float64)
    n = len(rows)
    clusters = max(n // factor, 1)
    if clusters >= n:
        return matrix, None, None

    distances = np.maximum(1.0 - np.einsum("id,jd->ij", rows, rows), 0.0)[np.triu_indices(n, k=1)]
    labels = fcluster(linkage(distances, method="ward"), t=clusters, criterion="maxclust") - 1
    means = np.array([rows[labels == label].mean(axis=0) for label in np.unique(labels)])
    if normalize:
        means /= np.linalg.norm(means, axis=1, keepdims=True)
    return np.concatenate([head, means.astype(np.float32)]), labels, distances


def hard(rng, count, dim):
    """
    Documents that stress the clustering: random rows, duplicated rows, a few rows repeated many times, all rows equal,
    coarse values (exact ties between different pairs), near-duplicates and rows that are not unit length.
    """

    results = []
    for x in range(count):
        n, kind = int(rng.integers(2, 120)), x % 7
        rows = rng.standard_normal((n, dim)).astype(np.float32)
        if kind == 1:
            rows[rng.integers(0, n, n // 2)] = rows[rng.integers(0, n, n // 2)]
        elif kind == 2:
            rows = rows[rng.integers(0, 4, n) % len(rows)]
        elif kind == 3:
            rows = np.repeat(rows[:1], n, axis=0)
        elif kind == 4:
            rows = np.round(rows / np.linalg.norm(rows, axis=1, keepdims=True) * 8) / 8
        elif kind == 5:
            rows = np.repeat(rows[: max(n // 3, 1)], 3, axis=0)[:n]
            rows = rows + 1e-6 * rng.standard_normal(rows.shape).astype(np.float32)
        if kind != 6:
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        results.append(rows.astype(np.float32))

    return results


@pytest.mark.parametrize("dim", [8, 128, 384])
def test_reference(dim):
    rng = np.random.default_rng(dim)
    for x, matrix in enumerate(hard(rng, 140, dim)):
        factor, protected, normalize = 2 + x % 3, x % 2, x % 5 != 0
        expected, labels, distances = reference(matrix, factor, protected, normalize)
        result = pool([matrix], factor, protected, normalize)[0]

        # Same clusters in the same order: the pooled rows match row for row
        assert result.dtype == np.float32 and result.shape == expected.shape, (x, result.shape, expected.shape)
        np.testing.assert_allclose(result, expected, atol=1e-6, err_msg=f"document {x}")

        # The compiled scipy routines give fcluster(linkage(...))'s labels, ties included
        if labels is not None:
            n = len(matrix) - protected
            np.testing.assert_array_equal(pooling.wardlabels(distances, n, max(n // factor, 1)), labels)


def test_public_scipy(monkeypatch):
    # Without scipy's compiled routines, the public linkage and fcluster give the same output
    rng = np.random.default_rng(4)
    data = hard(rng, 60, 32)
    fast = pool(data, 2)
    monkeypatch.setattr(pooling, "COMPILED", None)
    for matrix, expected in zip(data, fast):
        np.testing.assert_array_equal(pool([matrix], 2)[0], expected)


def test_threads():
    # BLAS is limited to one thread while pooling, and restored after
    before = threadpool_info()
    pool(documents(np.random.default_rng(5), 4, 5, 40), 2)
    assert threadpool_info() == before


def test_threads_concurrent():
    # Calls from several threads take turns with the BLAS limit, so the count found before is the count left after
    before = threadpool_info()
    data = documents(np.random.default_rng(6), 20, 5, 40)
    expected = pool(data, 2)
    results = [None] * 8

    def work(x):
        results[x] = pool(data, 2)

    threads = [threading.Thread(target=work, args=(x,)) for x in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert threadpool_info() == before
    for result in results:
        assert all(np.array_equal(a, b) for a, b in zip(result, expected))
