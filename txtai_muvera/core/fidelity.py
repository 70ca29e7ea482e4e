"""
Fidelity module: how much of exact MaxSim a stored form of the tokens keeps, measured on the corpus itself, without labels
"""

import time

import numpy as np
import torch

from . import codecs
from .pooling import pool
from .store import TokenStore

# Ranking depth the agreement is measured at (nDCG@10, top-10 overlap)
DEPTH = 10

# Pseudo-queries: this many spans of SPAN consecutive token rows each, cut from sample documents
QUERIES, SPAN = 128, (8, 16)

# Token rows a rung's codec is trained on (the sample's pooled rows, at most this many) and k-means iterations: a quarter of
# the rows and half the iterations the index trains with, so that the ladder stays a small share of encoding. On SciFact's
# first 1,024 documents with the stand-in, three rungs' estimates moved by at most 0.0012 against 65,536 rows and 20 iterations
TRAINING, ITERATIONS = 16384, 10

# Documents a calibration sample holds: the first of the write
DOCUMENTS = 1024

# Fewest sample documents an estimate is made from: below it a top 10 is most of the sample
MINIMUM = 100


class Sample:
    """
    Documents of a corpus as the encoder returned them (float, unpooled) and pseudo-queries cut from them.

    A pseudo-query is a span of 8 to 16 consecutive token rows of one sample document. Spans need no encoder pass and no text,
    and they ask what real queries ask of stored tokens: which of many similar documents holds the closest match to each of a
    few query tokens. Measured with the stand-in, the share of exact MaxSim's top 10 that stored tokens keep for such spans was
    within 0.015 of the share kept for SciFact's judged queries; real questions and entity names (MS MARCO, DBpedia) are
    harder than spans, and lose 0.02 to 0.06 more (docs/fidelity.md).
    """

    def __init__(self, documents, queries=QUERIES, seed=0):
        """
        Args:
            documents: list of float32 (tokens, dim) matrices, unpooled
            queries: number of pseudo-queries
            seed: random seed of the spans
        """

        # Documents without tokens match nothing and are left out
        self.documents = [np.asarray(x, dtype=np.float32) for x in documents if len(x)]
        if len(self.documents) < MINIMUM:
            raise ValueError(f"A fidelity sample needs at least {MINIMUM} documents, got {len(self.documents)}")

        rng = np.random.default_rng(seed)
        self.queries = []
        for _ in range(queries):
            matrix = self.documents[int(rng.integers(len(self.documents)))]
            length = min(len(matrix), int(rng.integers(SPAN[0], SPAN[1] + 1)))
            start = int(rng.integers(0, len(matrix) - length + 1))
            self.queries.append(matrix[start : start + length])

        # Exact MaxSim of every pseudo-query against every sample document: the reference each stored form is measured against
        self.exact = scores(self.queries, *flatten(self.documents))

    def __len__(self):
        return len(self.documents)

    def measure(self, tokens, offsets, scale=None):
        """
        Measures a stored form of the sample documents against exact MaxSim over their float tokens.

        Args:
            tokens, offsets, scale: the sample documents in stored form, in sample order (a TokenStore gather)

        Returns:
            dict, see agreement
        """

        if len(offsets) - 1 != len(self.documents):
            raise ValueError(f"Stored form has {len(offsets) - 1} documents, the sample has {len(self.documents)}")

        return agreement(self.exact, scores(self.queries, tokens, offsets, scale))


def agreement(exact, stored, depth=DEPTH):
    """
    Agreement of a ranking with exact MaxSim's, per query, averaged:
      - ndcg: nDCG@depth of the stored ranking, taking exact MaxSim's top `depth` as graded relevance (depth for its first
        document down to 1 for its last). It is 1.0 when the orders agree, and each exact top document that drops out or moves
        down costs, as a relevant document would in a judged evaluation where every top document is relevant: the strictest
        case of a real evaluation (docs/fidelity.md)
      - overlap: share of exact MaxSim's top `depth` in the stored top `depth`
      - error: mean absolute difference of the scores

    Args:
        exact: float (queries, documents) exact MaxSim scores
        stored: float (queries, documents) scores from the stored tokens
        depth: ranking depth

    Returns:
        {"ndcg": float, "overlap": float, "error": float}
    """

    exact, stored = np.asarray(exact, dtype=np.float64), np.asarray(stored, dtype=np.float64)
    if exact.shape != stored.shape or exact.ndim != 2:
        raise ValueError(f"Score arrays must have the same (queries, documents) shape, got {exact.shape} and {stored.shape}")

    depth = min(depth, exact.shape[1])
    reference = np.argsort(-exact, axis=1, kind="stable")[:, :depth]
    ranking = np.argsort(-stored, axis=1, kind="stable")[:, :depth]

    # gains[q, d]: depth - rank of document d in exact's top depth, 0 outside it
    gains = np.zeros(exact.shape)
    np.put_along_axis(gains, reference, np.arange(depth, 0, -1, dtype=np.float64)[None], axis=1)
    discounts = 1 / np.log2(np.arange(2, depth + 2))
    ideal = (np.arange(depth, 0, -1) * discounts).sum()
    ndcg = (np.take_along_axis(gains, ranking, axis=1) * discounts).sum(axis=1) / ideal

    overlap = (np.take_along_axis(gains, ranking, axis=1) > 0).sum(axis=1) / depth
    error = np.abs(exact - stored).mean(axis=1)

    return {"ndcg": float(ndcg.mean()), "overlap": float(overlap.mean()), "error": float(error.mean())}


def scores(queries, tokens, offsets, scale=None, rows=16384):
    """
    MaxSim of several queries against documents stored flat, all queries at once: one product of a block of document rows with
    every query row, a segment max per document, then a mean per query. Same values as maxsim_flat per query, in fewer, larger
    matrix products.

    Args:
        queries: list of float32 (q, dim) matrices, each with rows
        tokens: float32 / float16 (T, dim) rows of all documents, or int8 with scale
        offsets: int64 (n + 1,) row boundaries
        scale: float32 (T,) int8 row scales, or None
        rows: document rows per block

    Returns:
        float32 (queries, n)
    """

    offsets = np.asarray(offsets, dtype=np.int64)
    if np.any(np.diff(offsets) <= 0) or not all(len(x) for x in queries):
        raise ValueError("Every document and every query scored here needs at least one token row")

    matrix = torch.from_numpy(np.concatenate(queries).astype(np.float32))
    bounds = np.concatenate([[0], np.cumsum([len(x) for x in queries])])[:-1]
    lengths = np.array([len(x) for x in queries], dtype=np.float32)

    # Blocks end at document boundaries, so each document's rows are scored in one block
    n, best = len(offsets) - 1, np.zeros((len(offsets) - 1, len(matrix)), dtype=np.float32)
    start = 0
    while start < n:
        end = max(start + 1, int(np.searchsorted(offsets, offsets[start] + rows, side="right")) - 1)
        end = min(end, n)
        block = np.asarray(tokens[offsets[start] : offsets[end]], dtype=np.float32)
        if scale is not None:
            block = block * np.asarray(scale[offsets[start] : offsets[end]], dtype=np.float32)[:, None]
        # Query rows by document rows: the segment max then runs along contiguous rows, 2.5 x faster than down columns
        products = (matrix @ torch.from_numpy(np.ascontiguousarray(block)).T).numpy()
        best[start:end] = np.maximum.reduceat(products, offsets[start:end] - offsets[start], axis=1).T
        start = end

    # Mean over each query's rows: (n, query rows) summed per query
    return (np.add.reduceat(best, bounds, axis=1) / lengths).T.astype(np.float32)


def flatten(matrices):
    """
    Concatenates matrices into (tokens, offsets), the form maxsim_flat reads.

    Args:
        matrices: list of (t, dim) arrays

    Returns:
        (float32 (T, dim), int64 (n + 1,))
    """

    offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in matrices])
    dim = matrices[0].shape[1] if matrices else 0
    tokens = np.concatenate(matrices).astype(np.float32, copy=False) if offsets[-1] else np.zeros((0, dim), np.float32)
    return tokens, offsets


# Token settings the ladder tries, fewest bytes first (see order): pool factor and codec with its options. Residual 2-bit codes
# pooled by 3 and 2, adaptive 2.5-bit codes (nearly Residual's 4-bit fidelity at 63% of its bytes), then unpooled rows at 2, 2.5 and 4
# bits, then float16 rows unpooled, which keep exact MaxSim's ranking (docs/fidelity.md)
LADDER = (
    {"pool": 3, "tokens": "residual", "residual": {"bits": 2}},
    {"pool": 2, "tokens": "residual", "residual": {"bits": 2}},
    {"pool": 2, "tokens": "adaptive", "adaptive": {"bits": 2.5}},
    {"pool": 1, "tokens": "residual", "residual": {"bits": 2}},
    {"pool": 1, "tokens": "adaptive", "adaptive": {"bits": 2.5}},
    {"pool": 1, "tokens": "residual", "residual": {"bits": 4}},
    {"pool": 1, "tokens": "float16"},
)


# Config keys a rung sets: pool factor, codec name and the codec's options dict
KEYS = ("pool", "tokens", *codecs.CODECS)


def choose(sample, target, ladder=LADDER):
    """
    The first rung of the ladder, fewest bytes first, whose estimated fidelity (agreement ndcg) reaches the target, or the
    most faithful rung when none does. Rungs are measured in order and the search stops at the first that passes.

    Args:
        sample: Sample
        target: fidelity target in (0, 1]
        ladder: rungs, dicts with pool, tokens and codec options

    Returns:
        (chosen rung, list of (rung, measurement) for every rung measured)
    """

    dim, tried, clusters = sample.documents[0].shape[1], [], {}
    for rung in order(ladder, dim):
        result = measure(sample, rung, clusters)
        tried.append((rung, result))
        if result["ndcg"] >= target:
            return rung, tried

    return max(tried, key=lambda x: x[1]["ndcg"])[0], tried


def order(ladder, dim):
    """
    Rungs sorted by stored bytes per unpooled token: a codec's bytes per row divided by the pool factor.

    Args:
        ladder: rungs
        dim: token dimension

    Returns:
        list of rungs
    """

    def cost(rung):
        name = rung["tokens"]
        return codecs.create(name, dim, **rung.get(name, {})).bytes / rung["pool"]

    return sorted(ladder, key=cost)


def measure(sample, rung, clusters=None):
    """
    Stores the sample documents with a rung's settings (pooled, then encoded by its codec trained on the sample's pooled rows)
    and measures them against exact MaxSim.

    Args:
        sample: Sample
        rung: dict with pool, tokens and codec options
        clusters: cache shared by the rungs of one search: the sample pooled by each factor ("pooled", factor) and the residual
                  centroids learned on it ("centroids", factor), so that the codecs of one pool factor reuse one pooling and one k-means

    Returns:
        dict with ndcg, overlap, error (see agreement), bytes (stored token bytes per sample document) and seconds
    """

    start = time.perf_counter()
    clusters = {} if clusters is None else clusters
    factor, name = rung["pool"], rung["tokens"]
    if ("pooled", factor) not in clusters:
        clusters["pooled", factor] = pool(sample.documents, factor) if factor > 1 else sample.documents
    documents = clusters["pooled", factor]

    options = rung.get(name, {})
    if issubclass(codecs.CODECS[name], codecs.Residual):
        options = {"iterations": ITERATIONS, **options}
    codec = codecs.create(name, sample.documents[0].shape[1], **options)
    if not codec.trained:
        rows = np.concatenate(documents)
        rows = rows[np.sort(np.random.default_rng(0).choice(len(rows), min(len(rows), TRAINING), replace=False))]
        if isinstance(codec, codecs.Residual) and ("centroids", factor) in clusters:
            codec.train(rows, centroids=clusters["centroids", factor])
        else:
            codec.train(rows)
        if isinstance(codec, codecs.Residual):
            clusters["centroids", factor] = codec.centroids

    store = TokenStore(codec.dim, codec)
    store.add(np.arange(len(documents)), documents)
    tokens, offsets, scale = store.gather(np.arange(len(documents)))
    result = sample.measure(tokens, offsets, scale)
    result.update(bytes=store.nbytes / len(documents), seconds=time.perf_counter() - start)
    return result


def report(rung, result, tried, documents, queries, seconds):
    """
    The estimate as saved in the index config ("estimate") and shown by `txtai-muvera info`.

    Args:
        rung: token settings measured (and kept)
        result: its measurement
        tried: (rung, measurement) of every rung the ladder measured, empty when nothing was chosen
        documents: sample documents
        queries: pseudo-queries
        seconds: time spent, ladder included

    Returns:
        JSON-able dict
    """

    def row(settings, values):
        return {"settings": name(settings), "fidelity": round(values["ndcg"], 4), "bytes": round(values["bytes"])}

    return {
        "fidelity": round(result["ndcg"], 4),
        "overlap": round(result["overlap"], 4),
        "error": round(result["error"], 5),
        "settings": name(rung),
        "documents": documents,
        "queries": queries,
        "seconds": round(seconds, 2),
        **({"ladder": [row(settings, values) for settings, values in tried]} if tried else {}),
    }


def name(rung):
    """
    Short name of token settings, e.g. "pool 2, residual 2-bit".

    Args:
        rung: dict with pool, tokens and codec options

    Returns:
        str
    """

    codec = rung["tokens"]
    options = {**codecs.CODECS[codec].defaults, **(rung.get(codec) or {})}
    label = f"{codec} {options['bits']}-bit" if "bits" in options else codec
    return f"pool {rung['pool']}, {label}"


def describe(estimate, target=None):
    """
    One line for logs and command output.

    Args:
        estimate: report() dict
        target: fidelity target the settings were chosen for, or None when they were given

    Returns:
        str
    """

    how = f"chosen for fidelity {target:g}" if target is not None else "as configured"
    return (
        f"Fidelity {estimate['fidelity']:.3f} of exact MaxSim nDCG@10 (top-10 overlap {estimate['overlap']:.3f}), estimated on "
        f"{estimate['documents']:,} documents with {estimate['queries']} pseudo-queries in {estimate['seconds']:.1f} s: "
        f"{estimate['settings']}, {how}"
    )
