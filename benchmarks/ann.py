"""
FDE index benchmark: recall of approximate faiss indexes against exact inner product search on FDE vectors.

Documents are clustered token clouds (topics in token space) encoded with MUVERA, queries are noisy subsets of a
document's tokens. Prints one JSON line per result: recall@10 / recall@100 against exact flat search, build seconds and
per query latency (one query at a time). Used to pick FDEIndex defaults and the auto threshold.

Run: python benchmarks/ann.py [--documents 20000] [--final 2048]
"""

import argparse
import json
import time

import faiss
import numpy as np

from txtai_muvera.core.ann import FDEIndex

try:
    from txtai_muvera.core.muvera import Muvera
except ImportError:
    from txtai.models.pooling.muvera import Muvera


def clouds(rng, count, topics, tokens, dim, centers):
    """
    Clustered token clouds: each document mixes a topic center with noise, rows L2-normalised.
    """

    results = []
    for topic in rng.integers(0, topics, count):
        length = int(rng.integers(tokens // 2, tokens * 3 // 2 + 1))
        noise = 0.8 * rng.standard_normal((length, dim)) + 0.5 * rng.standard_normal(dim)
        x = centers[topic] + noise.astype(np.float32)
        results.append(x / np.linalg.norm(x, axis=1, keepdims=True))

    return results


def encode(encoder, rng, count, args, centers, category, batch=1000):
    """
    Encodes count random documents (or queries) to FDEs in batches.
    """

    vectors = []
    for start in range(0, count, batch):
        data = clouds(rng, min(batch, count - start), args.topics, args.tokens if category == "data" else args.query, args.dim, centers)
        vectors.append(encoder(data, category))

    return np.concatenate(vectors).astype(np.float32)


def latency(index, queries, limit, **kwargs):
    """
    Median per query latency in ms, one query at a time.
    """

    times = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None], limit, **kwargs)
        times.append((time.perf_counter() - start) * 1e3)

    return float(np.median(times))


def recall(found, exact, k):
    """
    Mean recall@k of found ids against exact ids.
    """

    return float(np.mean([len(set(f[:k].tolist()) & set(e[:k].tolist())) / k for f, e in zip(found, exact)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--topics", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--query", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--final", type=int, default=None, help="MUVERA final projection size, None keeps 10,240 dims")
    parser.add_argument("--skip", default="", help="comma separated groups to skip: hnsw,ivf,quantize")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((args.topics, args.dim)).astype(np.float32) * 0.15
    encoder = Muvera(final=args.final) if args.final else Muvera()

    start = time.perf_counter()
    vectors = encode(encoder, rng, args.documents, args, centers, "data")
    queries = encode(encoder, rng, args.queries, args, centers, "query")
    dims, ids = vectors.shape[1], np.arange(len(vectors), dtype=np.int64)
    encoding = round(time.perf_counter() - start, 1)
    print(json.dumps({"documents": len(vectors), "dims": dims, "threads": faiss.omp_get_max_threads(), "encode_s": encoding}))

    # Exact reference and flat latency as the collection grows (sets the auto threshold)
    exact = None
    for n in sorted({x for x in (1000, 2500, 5000, 10000, 20000, 50000) if x < len(vectors)} | {len(vectors)}):
        index = FDEIndex(dims, "flat")
        start = time.perf_counter()
        index.index(ids[:n], vectors[:n])
        build = time.perf_counter() - start
        print(json.dumps({"index": "flat", "documents": n, "build_s": round(build, 2), "latency_ms": round(latency(index, queries[:30], 100), 2)}))
        if n == len(vectors):
            exact = index.search(queries, 100)[1]

    configs = []
    if "hnsw" not in args.skip:
        efsearch = [{"efsearch": e} for e in (64, 128, 256)]
        configs += [("hnsw", None, {"hnsw": {"m": m, "efconstruction": 100}}, efsearch) for m in (16, 32)]
    if "ivf" not in args.skip:
        sqrt = int(np.sqrt(len(vectors)))
        configs += [("ivf", None, {"ivf": {"nlist": nlist}}, [{"nprobe": p} for p in (8, 16, 32, 64)]) for nlist in (sqrt, 4 * sqrt)]
    if "quantize" not in args.skip:
        configs += [("flat", "sq8", {}, [{}]), ("flat", "pq", {}, [{}])]
        configs += [("hnsw", "sq8", {"hnsw": {"m": 32, "efconstruction": 100}}, [{"efsearch": 128}])]

    for kind, quantize, settings, searches in configs:
        index = FDEIndex(dims, kind, quantize, **settings)
        start = time.perf_counter()
        index.index(ids, vectors)
        build = time.perf_counter() - start
        for search in searches:
            found = index.search(queries, 100, **search)[1]
            print(
                json.dumps(
                    {
                        "index": kind,
                        "quantize": quantize,
                        **{k: v for k, v in index.config.items() if k in ("hnsw", "ivf", "pq")},
                        **search,
                        "recall@10": round(recall(found, exact, 10), 3),
                        "recall@100": round(recall(found, exact, 100), 3),
                        "build_s": round(build, 1),
                        "latency_ms": round(latency(index, queries[:30], 100, **search), 2),
                    }
                )
            )


if __name__ == "__main__":
    main()
