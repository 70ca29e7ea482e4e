"""
Recall of FDE candidates against exact MaxSim at scale: the fraction of each query's exact MaxSim top 10 found among the FDE index's
top N candidates (N = 100, 200, 300), for exact FDE search (flat), HNSW at several M / efSearch, IVF at several nprobe and the
compressed indexes (sq8, PQ-256-8, binary sign codes with float re-scoring), with bytes per document and one-query search time.

Documents are the cached token matrices of real BEIR corpora (benchmarks/footprint.py --encode: scifact, msmarco-dl19-5k,
dbpedia-5k, MiniLM stand-in). With --documents above the real count the corpus is padded with synthetic documents built from
the real token matrices: each joins a random leading part of one real document (its [CLS] token included) with a random
trailing part of another, every token perturbed by N(0, 0.01) noise per dimension and re-normalised, with lengths drawn from the
real length distribution. They share vocabulary, topics and length with the real text, and act as hard distractors (half of a
synthetic document is a near copy of half of a real one). Exact MaxSim is brute force over every document, streamed in chunks.

    python benchmarks/recall.py --datasets scifact                           # 5,183 documents, 300 queries
    python benchmarks/recall.py --documents 50000 --queries 50,25,25         # real 15,183 + 34,817 synthetic

Writes one JSON line per (index, depth) to benchmarks/output/recall-<documents>.jsonl and a markdown table to stdout.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pylint: disable=C0413
from footprint import DATASETS, OUTPUT, Tokens, chunks

# Candidate depths
DEPTHS = (100, 200, 300)

# FDE indexes: name -> (FDEIndex options, search keyword arguments; "efsearch" may be a function of the depth)
INDEXES = {
    "flat": ({"index": "flat"}, {}),
    "hnsw m32 ef128": ({"index": "hnsw"}, {"efsearch": 128}),
    "hnsw m32 ef=2x": ({"index": "hnsw"}, {"efsearch": lambda n: 2 * n}),
    "hnsw m32 ef=4x": ({"index": "hnsw"}, {"efsearch": lambda n: 4 * n}),
    "hnsw m32 ef=8x": ({"index": "hnsw"}, {"efsearch": lambda n: 8 * n}),
    "hnsw m64 efc200 ef=2x": ({"index": "hnsw", "hnsw": {"m": 64, "efconstruction": 200}}, {"efsearch": lambda n: 2 * n}),
    "hnsw m64 efc200 ef=4x": ({"index": "hnsw", "hnsw": {"m": 64, "efconstruction": 200}}, {"efsearch": lambda n: 4 * n}),
    "ivf nprobe64": ({"index": "ivf"}, {"nprobe": 64}),
    "ivf nprobe=nlist/4": ({"index": "ivf"}, {"nprobe": "quarter"}),
    "flat sq8": ({"index": "flat", "quantize": "sq8"}, {}),
    "flat pq-256-8": ({"index": "flat", "quantize": "pq", "pq": {"m": 1280}}, {}),
    "flat binary x4": ({"index": "flat", "quantize": "binary"}, {}),
    "flat binary x16": ({"index": "flat", "quantize": "binary", "binary": {"rescore": 16}}, {}),
    "hnsw binary x4 ef=8x": ({"index": "hnsw", "quantize": "binary"}, {"efsearch": lambda n: 8 * n}),
    "hnsw sq8 ef=2x": ({"index": "hnsw", "quantize": "sq8"}, {"efsearch": lambda n: 2 * n}),
}


class Corpus:
    """
    Real documents of several cached datasets, padded with synthetic ones to a target count, produced in chunks.
    """

    def __init__(self, datasets, documents, seed=0):
        self.real = [Tokens(os.path.join(OUTPUT, "tokens", x)) for x in datasets]
        self.sizes = [len(x.offsets) - 1 for x in self.real]
        self.total = max(documents or 0, sum(self.sizes))
        self.seed = seed

        lengths = np.concatenate([np.diff(x.offsets) for x in self.real])
        self.lengths = lengths[lengths > 1]

    def matrix(self, index):
        """
        Real document `index` (over all datasets, in order) as float32.
        """

        for tokens, size in zip(self.real, self.sizes):
            if index < size:
                return np.asarray(tokens.tokens[tokens.offsets[index] : tokens.offsets[index + 1]], dtype=np.float32)
            index -= size

        raise IndexError(index)

    def chunk(self, start, end):
        """
        Documents start..end-1: real first, then synthetic (deterministic per document).
        """

        real, matrices = sum(self.sizes), []
        for x in range(start, end):
            if x < real:
                matrices.append(self.matrix(x))
                continue

            rng = np.random.default_rng([self.seed, x])
            length = int(rng.choice(self.lengths))
            first, second = self.matrix(int(rng.integers(real))), self.matrix(int(rng.integers(real)))
            head = min(len(first), max(1, int(rng.integers(1, length))))
            tail = min(len(second) - 1, length - head)
            rows = np.concatenate([first[:head], second[len(second) - tail :] if tail > 0 else second[:0]])
            rows = rows + rng.normal(0, 0.01, rows.shape).astype(np.float32)
            matrices.append(rows / np.linalg.norm(rows, axis=1, keepdims=True))

        return matrices

    def queries(self, counts):
        """
        The first counts[i] queries of each dataset.
        """

        return [query for tokens, count in zip(self.real, counts) for query in tokens.queries()[:count]]


def size(index):
    """
    Bytes of an FDE index's saved files.
    """

    with tempfile.TemporaryDirectory(dir=OUTPUT) as folder:
        index.save(os.path.join(folder, "fdes"))
        return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def prepare(corpus, queries, cache, chunk=1024):
    """
    FDEs (20/5/16) of every document and query, and each query's exact MaxSim top 10, cached in the folder `cache`.

    Returns:
        (document FDEs float32 (n, 10240), query FDEs, list of top-10 sets)
    """

    # pylint: disable=C0415
    from txtai_muvera import Muvera
    from txtai_muvera.core.maxsim import maxsim_flat, topk

    files = [os.path.join(cache, x) for x in ("fdes.npy", "queries.npy", "exact.json")]
    if all(os.path.isfile(x) for x in files):
        with open(files[2], encoding="utf-8") as f:
            return np.load(files[0], mmap_mode="r"), np.load(files[1]), [set(x) for x in json.load(f)]

    # One real dataset without padding: the footprint grid's exact MaxSim ranking (same tokens, same kernel) is reused
    grid = os.path.join(OUTPUT, "footprint", f"{corpus.real[0].name}-{len(queries)}-exact.json")
    reuse = len(corpus.real) == 1 and corpus.total == corpus.sizes[0] and len(queries) == len(corpus.real[0].queryids) and os.path.isfile(grid)

    os.makedirs(cache, exist_ok=True)
    encoder = Muvera(repetitions=20, hashes=5, projection=16, seed=42)
    fdes = np.lib.format.open_memmap(files[0] + ".tmp.npy", mode="w+", dtype=np.float32, shape=(corpus.total, encoder.dimensions(queries[0].shape[1])))
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]

    start = time.perf_counter()
    for a, b in chunks(corpus.total, chunk):
        matrices = corpus.chunk(a, b)
        fdes[a:b] = encoder(matrices, "data")

        offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in matrices])
        tokens = np.concatenate(matrices)
        for x, query in enumerate([] if reuse else queries):
            scores = np.concatenate([best[x][0], maxsim_flat(query, tokens, offsets)])
            ids = np.concatenate([best[x][1], np.arange(a, b, dtype=np.int64)])
            order, _ = topk(scores, 10)
            best[x] = (scores[order], ids[order])

        sys.stdout.write(f"  {b:,} documents, {time.perf_counter() - start:.0f} s\n")
        sys.stdout.flush()

    fdes.flush()
    del fdes
    os.rename(files[0] + ".tmp.npy", files[0])
    np.save(files[1], encoder(queries, "query"))
    if reuse:
        with open(grid, encoding="utf-8") as f:
            best = [(None, np.array(x[:10])) for x in json.load(f)]
    with open(files[2], "w", encoding="utf-8") as f:
        json.dump([x[1].tolist() for x in best], f)

    return prepare(corpus, queries, cache)


def main():
    """
    Runs the recall grid.
    """

    parser = argparse.ArgumentParser(description="Recall of FDE candidates against exact MaxSim at scale")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--documents", type=int, default=None, help="pad with synthetic documents up to this count")
    parser.add_argument("--queries", default="300,43,40", help="queries taken from each dataset")
    parser.add_argument("--indexes", default=",".join(INDEXES))
    parser.add_argument("--threads", type=int, default=2, help="faiss threads while building (searches are timed on 1 thread)")
    parser.add_argument("--timed", type=int, default=30, help="queries timed one at a time")
    args = parser.parse_args()

    # pylint: disable=C0415
    import faiss

    from txtai_muvera import FDEIndex

    datasets = args.datasets.split(",")
    corpus = Corpus(datasets, args.documents)
    queries = corpus.queries([int(x) for x in args.queries.split(",")])
    sys.stdout.write(f"{corpus.total:,} documents ({sum(corpus.sizes):,} real), {len(queries)} queries\n")

    cache = os.path.join(OUTPUT, "recall", f"{'+'.join(datasets)}-{corpus.total}-{len(queries)}")
    fdes, qfdes, exact = prepare(corpus, queries, cache)
    output = os.path.join(OUTPUT, f"recall-{corpus.total}.jsonl")

    # Indexes with the same build options are built once (names differ by search settings)
    rows, built = [], {}
    for name in args.indexes.split(","):
        options, search = INDEXES[name]
        key = json.dumps(options, sort_keys=True)
        if key not in built:
            built.clear()
            faiss.omp_set_num_threads(args.threads)
            index = FDEIndex(fdes.shape[1], **json.loads(key))
            start = time.perf_counter()
            index.index(np.arange(len(fdes)), np.asarray(fdes))
            built[key] = (index, time.perf_counter() - start, size(index) / len(fdes))
        index, build, bytes_ = built[key]

        faiss.omp_set_num_threads(1)
        for depth in DEPTHS:
            kwargs = {key: value(depth) if callable(value) else value for key, value in search.items()}
            if kwargs.get("nprobe") == "quarter":
                kwargs["nprobe"] = max(1, index.ivf["nlist"] // 4)

            _, ids = index.search(qfdes, depth, **kwargs)
            recall = float(np.mean([len(top & set(row.tolist())) / len(top) for top, row in zip(exact, ids)]))

            times = []
            for query in qfdes[: args.timed]:
                begin = time.perf_counter()
                index.search(query, depth, **kwargs)
                times.append(time.perf_counter() - begin)

            row = {
                "documents": len(fdes),
                "queries": len(qfdes),
                "index": name,
                "config": index.config,
                "depth": depth,
                "search": {key: value for key, value in kwargs.items()},
                "recall": round(recall, 4),
                "bytes": round(bytes_, 1),
                "build_s": round(build, 1),
                "p50_ms": round(1000 * float(np.median(times)), 2),
            }
            rows.append(row)
            with open(output, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()

    table(rows)


def table(rows):
    """
    Prints recall@depth per index with bytes/doc, build time and one-query p50.
    """

    indexes = list(dict.fromkeys(x["index"] for x in rows))
    header = ["index", "bytes/doc", "build s"] + [f"R10@{d}" for d in DEPTHS] + [f"p50 ms @{d}" for d in DEPTHS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name in indexes:
        group = {x["depth"]: x for x in rows if x["index"] == name}
        first = next(iter(group.values()))
        cells = [name, f"{first['bytes']:,.0f}", f"{first['build_s']:.0f}"]
        cells += [f"{group[d]['recall']:.3f}" if d in group else "" for d in DEPTHS]
        cells += [f"{group[d]['p50_ms']:.1f}" if d in group else "" for d in DEPTHS]
        lines.append("| " + " | ".join(cells) + " |")

    sys.stdout.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
