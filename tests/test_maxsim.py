"""
MaxSim module tests
"""

import numpy as np
import pytest
import torch

from txtai_muvera.core import codecs
from txtai_muvera.core.maxsim import EMPTY, maxsim, maxsim_flat, maxsim_padded, rerank, topk


def loopscore(query, document):
    """
    Plain-loop MaxSim from the spec: best dot product per query token, averaged over query tokens.
    """

    query, document = np.asarray(query, dtype=np.float64), np.asarray(document, dtype=np.float64)
    if len(document) == 0:
        return EMPTY
    if len(query) == 0:
        return 0.0

    total = 0.0
    for q in query:
        best = -np.inf
        for t in document:
            best = max(best, float(sum(a * b for a, b in zip(q, t))))
        total += best

    return total / len(query)


def matrices(rng, count, dim, low=0, high=12):
    """
    Random L2-normalised token matrices with random lengths.
    """

    results = []
    for _ in range(count):
        x = rng.standard_normal((int(rng.integers(low, high + 1)), dim)).astype(np.float32)
        results.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))

    return results


def flat(documents, dim):
    """
    Flattens documents into (tokens, offsets).
    """

    offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in documents])
    tokens = np.concatenate([x.reshape(-1, dim) for x in documents]) if documents else np.zeros((0, dim), np.float32)

    return tokens, offsets


def test_maxsim_loop():
    rng = np.random.default_rng(0)
    queries, documents = matrices(rng, 4, 8, 1, 6), matrices(rng, 7, 8, 1, 10)

    scores = maxsim(queries, documents)
    assert scores.shape == (4, 7) and scores.dtype == np.float32
    expected = np.array([[loopscore(q, d) for d in documents] for q in queries])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    # One 2-D array is one query; torch inputs work too
    np.testing.assert_allclose(maxsim(queries[1], documents)[0], expected[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maxsim([torch.from_numpy(q) for q in queries], documents), expected, rtol=1e-5, atol=1e-6)


def test_maxsim_flat_float32_empty():
    rng = np.random.default_rng(1)
    query = matrices(rng, 1, 16, 5, 5)[0]
    documents = matrices(rng, 20, 16, 0, 9)
    documents[3] = np.zeros((0, 16), np.float32)
    tokens, offsets = flat(documents, 16)

    scores = maxsim_flat(query, tokens, offsets)
    expected = np.array([loopscore(query, d) for d in documents])
    assert scores.dtype == np.float32 and scores.shape == (20,)
    assert scores[3] == EMPTY
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    # Equal lengths take the view path
    same = matrices(rng, 5, 16, 4, 4)
    tokens, offsets = flat(same, 16)
    np.testing.assert_allclose(maxsim_flat(query, tokens, offsets), [loopscore(query, d) for d in same], rtol=1e-5, atol=1e-6)

    # All empty, no documents, empty query
    tokens, offsets = flat([np.zeros((0, 16), np.float32)] * 3, 16)
    assert np.all(maxsim_flat(query, tokens, offsets) == EMPTY)
    assert maxsim_flat(query, np.zeros((0, 16), np.float32), np.zeros(1, np.int64)).shape == (0,)
    tokens, offsets = flat([documents[0], documents[3]], 16)
    np.testing.assert_array_equal(maxsim_flat(np.zeros((0, 16), np.float32), tokens, offsets), [0.0, EMPTY])


def test_maxsim_flat_float16_int8():
    rng = np.random.default_rng(2)
    query = matrices(rng, 1, 16, 6, 6)[0]
    documents = matrices(rng, 15, 16, 0, 9)
    tokens, offsets = flat(documents, 16)

    # float16 is scored exactly as stored
    half = tokens.astype(np.float16)
    expected = [loopscore(query, half[offsets[i] : offsets[i + 1]].astype(np.float32)) for i in range(15)]
    np.testing.assert_allclose(maxsim_flat(query, half, offsets), expected, rtol=1e-5, atol=1e-6)

    # int8 with per row scale: value = int8 * scale
    scale = (np.abs(tokens).max(axis=1) / 127).astype(np.float32)
    quantized = np.round(tokens / scale[:, None]).astype(np.int8)
    dequantized = quantized.astype(np.float32) * scale[:, None]
    expected = [loopscore(query, dequantized[offsets[i] : offsets[i + 1]]) for i in range(15)]
    np.testing.assert_allclose(maxsim_flat(query, quantized, offsets, scale=scale), expected, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="scale"):
        maxsim_flat(query, quantized, offsets)
    with pytest.raises(ValueError, match="offsets"):
        maxsim_flat(query, tokens, offsets[:-1])


def test_maxsim_padded():
    rng = np.random.default_rng(3)
    queries, documents = matrices(rng, 3, 8, 0, 5), matrices(rng, 6, 8, 0, 7)

    def pad(items):
        width = max(len(x) for x in items)
        array, mask = np.zeros((len(items), width, 8), np.float32), np.zeros((len(items), width), bool)
        for i, x in enumerate(items):
            array[i, : len(x)], mask[i, : len(x)] = x, True
        return array, mask

    (q, qmask), (d, dmask) = pad(queries), pad(documents)
    scores = maxsim_padded(q, qmask, d, dmask)
    expected = np.array([[loopscore(x, y) for y in documents] for x in queries])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, maxsim(queries, documents), rtol=1e-5, atol=1e-6)


def test_batch_independence():
    rng = np.random.default_rng(4)
    queries, documents = matrices(rng, 5, 8, 1, 6), matrices(rng, 30, 8, 0, 12)
    full = maxsim(queries, documents)

    # Scores do not depend on which other documents or queries are in the batch
    for start in range(0, 30, 7):
        np.testing.assert_allclose(maxsim(queries, documents[start : start + 7]), full[:, start : start + 7], rtol=1e-6, atol=1e-7)
    for x, query in enumerate(queries):
        np.testing.assert_allclose(maxsim([query], documents)[0], full[x], rtol=1e-6, atol=1e-7)
        tokens, offsets = flat(documents[::-1], 8)
        np.testing.assert_allclose(maxsim_flat(query, tokens, offsets)[::-1], full[x], rtol=1e-6, atol=1e-7)


def test_topk():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 5, (6, 40)).astype(np.float32)
    for k in (0, 1, 7, 40, 100):
        indices, values = topk(scores, k)
        assert indices.shape == (6, min(k, 40))
        for row in range(6):
            # Loop twin: sort by (-score, index)
            expected = sorted(range(40), key=lambda i: (-scores[row, i], i))[: min(k, 40)]
            assert indices[row].tolist() == expected
            assert values[row].tolist() == [scores[row, i] for i in expected]

    indices, values = topk(scores[0], 3)
    assert indices.shape == (3,) and values.tolist() == sorted(scores[0].tolist(), reverse=True)[:3]


def test_rerank():
    rng = np.random.default_rng(6)
    queries = matrices(rng, 3, 8, 2, 6)
    ids = [["a", "b", "c"], [10, 11], [5, 6, 7, 8]]
    candidates = [matrices(rng, len(x), 8, 1, 9) for x in ids]

    results = rerank(ids, queries, candidates)
    assert len(results) == 3
    for query, qids, docs, result in zip(queries, ids, candidates, results):
        # PyLate scale: sum over query tokens
        expected = sorted([(qids[i], loopscore(query, d) * len(query)) for i, d in enumerate(docs)], key=lambda x: -x[1])
        assert [x["id"] for x in result] == [x[0] for x in expected]
        np.testing.assert_allclose([x["score"] for x in result], [x[1] for x in expected], rtol=1e-5)
        assert all(isinstance(x["score"], float) for x in result)

    # Torch inputs and a single 2-D query
    tensors = rerank(ids[:1], torch.from_numpy(queries[0]), [[torch.from_numpy(x) for x in candidates[0]]])
    assert tensors[0] == results[0] or np.allclose([x["score"] for x in tensors[0]], [x["score"] for x in results[0]])
    assert rerank([[]], queries[:1], [[]]) == [[]]


@pytest.mark.parametrize("name", ["residual", "pq"])
def test_maxsim_flat_codes(name):
    """
    A Codes block (the search path's gather of residual / PQ codes) scores like a plain loop over its decoded rows, empty
    documents and empty queries included, and a corrupt codec state is reported like a bad stored token.
    """

    rng = np.random.default_rng(5)
    codec = codecs.create(name, 16, **({"m": 4} if name == "pq" else {"centroids": 8}))
    codec.train(rng.standard_normal((600, 16)).astype(np.float32))
    query = matrices(rng, 1, 16, 6, 6)[0]
    documents = matrices(rng, 40, 16, 0, 60)
    tokens, offsets = flat(documents, 16)
    codes = codecs.Codes(codec, codec.encode(tokens))

    decoded = codec.decode(codes.codes)
    expected = [loopscore(query, decoded[offsets[i] : offsets[i + 1]]) for i in range(40)]
    np.testing.assert_allclose(maxsim_flat(query, codes, offsets), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(maxsim_flat(np.zeros((0, 16), np.float32), codes, offsets), np.where(np.diff(offsets) > 0, 0.0, EMPTY))
    with pytest.raises(ValueError, match="offsets"):
        maxsim_flat(query, codes, offsets[:-1])

    # A NaN in the codec's state reaches every row that uses it: the documents holding those rows are refused
    if name == "residual":
        codec.centroids[codes.codes["codes"][0], 3] = np.nan
    else:
        codec.codebooks[0, codes.codes["codes"][0, 0], 0] = np.nan
    with pytest.raises(ValueError, match=rf"document tokens hold NaN or infinity: \d+ documents, first positions \[{np.argmax(np.diff(offsets) > 0)}"):
        maxsim_flat(query, codes, offsets)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite(value):
    rng = np.random.default_rng(11)
    query = rng.standard_normal((4, 8)).astype(np.float32)
    documents = [rng.standard_normal((n, 8)).astype(np.float32) for n in (3, 0, 5, 2)]

    # A bad document token is named by the document's position, for every stored dtype
    bad = [x.copy() for x in documents]
    bad[2][4, 1] = value
    tokens, offsets = np.concatenate(bad), np.array([0, 3, 3, 8, 10])
    for dtype in (np.float32, np.float16):
        with pytest.raises(ValueError, match=r"NaN or infinity: 1 documents, first positions \[2\]"):
            maxsim_flat(query, tokens.astype(dtype), offsets)
    with pytest.raises(ValueError, match="NaN or infinity"):
        maxsim_flat(query, np.ones((10, 8), dtype=np.int8), offsets, scale=np.where(np.arange(10) == 9, value, 1.0).astype(np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        maxsim([query], bad)

    # Finite similarities whose sum overflows float32 are not mistaken for bad tokens
    large = np.full((3, 4), 5e18, dtype=np.float32)
    np.testing.assert_allclose(maxsim_flat(large[:2], large, np.array([0, 1, 3])), [1e38, 1e38], rtol=1e-5)

    # A bad query token
    badquery = query.copy()
    badquery[0, 0] = value
    with pytest.raises(ValueError, match="query tokens hold NaN or infinity"):
        maxsim_flat(badquery, np.concatenate(documents), offsets)

    # Padded kernel: bad real tokens are refused, padding may hold anything
    padded = np.zeros((2, 5, 8), dtype=np.float32)
    padded[0, :3], padded[1, :2] = documents[0], documents[3]
    mask = np.zeros((2, 5), dtype=bool)
    mask[0, :3], mask[1, :2] = True, True
    padded[1, 4, 0] = value
    scores = maxsim_padded(query[None], np.ones((1, 4), dtype=bool), padded, mask)
    np.testing.assert_allclose(scores[0], [loopscore(query, documents[0]), loopscore(query, documents[3])], rtol=1e-5)
    padded[1, 1, 0] = value
    with pytest.raises(ValueError, match="NaN or infinity"):
        maxsim_padded(query[None], np.ones((1, 4), dtype=bool), padded, mask)
