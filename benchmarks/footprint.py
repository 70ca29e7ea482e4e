"""
Footprint grid: bytes per document against re-ranked nDCG@10 relative to exact MaxSim, at the core level (no txtai):

    cached token matrices -> pool (documents only) -> token codec store -> MUVERA FDE (from the unpooled tokens, as the scoring
    class computes it) -> FDE index (none, sq8, PQ, binary, final projection) -> top-N candidates -> exact MaxSim re-rank over
    the stored (pooled, coded) tokens -> ranx nDCG@10, against full exact MaxSim nDCG@10 over the unpooled float16 tokens.

Each dataset's corpus and judged queries are encoded once with the stand-in checkpoint and cached as flat arrays under
benchmarks/output/tokens/<dataset>/ (`python benchmarks/footprint.py --encode`).

MaxSim scores depend on the stored tokens only, so each (pool, codec) store scores the union of every FDE variant's candidates
per query once; the top 100 / 200 / 300 candidates of each variant are then read from those scores. Latency is measured per
component, one query at a time on a subset of queries: FDE search (per FDE variant and depth) and gather + MaxSim + top 10 (per
store and depth); the reported p50 is their sum.

    python benchmarks/footprint.py                       # the grid on scifact, msmarco-dl19-5k, dbpedia-5k
    python benchmarks/footprint.py --report              # tables and plot again from benchmarks/output/footprint.jsonl

Writes benchmarks/output/footprint.jsonl, docs/footprint.md and docs/footprint.png.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

# Idle OpenMP threads sleep instead of spinning: one-query timings on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Benchmark folder and outputs
ROOT = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(ROOT, "output")
DATA = os.path.join(ROOT, "..", "..", "shared", "data", "beir")
DOCS = os.path.join(ROOT, "..", "docs")
DATASETS = ("scifact", "msmarco-dl19-5k", "dbpedia-5k")

# MUVERA settings: the default 20/5/16 (10,240 dims) and the final count-sketch projections
MUVERA = {"20/5/16": {}, "final 4096": {"final": 4096}, "final 2048": {"final": 2048}}

# FDE compressions: name -> (MUVERA setting, FDEIndex options). PQ-256-8 is MUVERA's setting (8-dim groups, 256 centroids);
# PQ-256-16 has 16-dim groups (half the code, half the sub-quantizers to train). 4-bit fast-scan PQ (`pq: {nbits: 4}`) is left
# out: with 2,560 sub-quantizers faiss's per-sub-quantizer k-means overhead made it the slowest to train (405 s for 300 vectors)
FDES = {
    "none": ("20/5/16", {"index": "flat"}),
    "sq8": ("20/5/16", {"index": "flat", "quantize": "sq8"}),
    "pq-256-8": ("20/5/16", {"index": "flat", "quantize": "pq", "pq": {"m": 1280}}),
    "pq-256-16": ("20/5/16", {"index": "flat", "quantize": "pq", "pq": {"m": 640}}),
    "binary": ("20/5/16", {"index": "flat", "quantize": "binary"}),
    "final 4096 sq8": ("final 4096", {"index": "flat", "quantize": "sq8"}),
    "final 2048": ("final 2048", {"index": "flat"}),
    "final 2048 sq8": ("final 2048", {"index": "flat", "quantize": "sq8"}),
    "final 2048 pq-256-8": ("final 2048", {"index": "flat", "quantize": "pq", "pq": {"m": 256}}),
}

# Token codecs: name -> (codec, options)
CODECS = {
    "float16": ("float16", {}),
    "int8": ("int8", {}),
    "residual 4": ("residual", {"bits": 4}),
    "residual 2": ("residual", {"bits": 2}),
    "pq": ("pq", {}),
}

POOLS, CANDIDATES = (1, 2, 3), (100, 200, 300)

# Token rows sampled to train a codec (the file engine's default) and queries timed per component
SAMPLE, TIMED = 65536, 30


class Tokens:
    """
    Cached token matrices of one dataset: documents (float16, flat with offsets), queries (float32, flat with offsets), ids and
    qrels.
    """

    def __init__(self, folder):
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)

        self.name, self.docids, self.queryids, self.qrels = meta["name"], meta["docids"], meta["queryids"], meta["qrels"]
        self.fingerprint = meta["fingerprint"]
        self.tokens = np.load(os.path.join(folder, "documents.npy"), mmap_mode="r")
        self.offsets = np.load(os.path.join(folder, "offsets.npy"))
        self.qtokens = np.load(os.path.join(folder, "queries.npy"))
        self.qoffsets = np.load(os.path.join(folder, "qoffsets.npy"))

    def documents(self, dtype=np.float32):
        """
        Document token matrices as a list of arrays.
        """

        return [np.asarray(self.tokens[a:b], dtype=dtype) for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def queries(self):
        """
        Query token matrices as a list of float32 arrays.
        """

        return [self.qtokens[a:b] for a, b in zip(self.qoffsets[:-1], self.qoffsets[1:])]


def flat(matrices, dtype):
    """
    Concatenates matrices into (tokens, offsets).
    """

    offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in matrices])
    return np.concatenate(matrices).astype(dtype), offsets


def load(data, model=None, threads=2, batch=32):
    """
    Loads a dataset's cached token matrices, encoding and caching them first when missing.

    Args:
        data: BEIR folder
        model: checkpoint folder (default: the stand-in under benchmarks/output/standin)
        threads: torch threads
        batch: encoder batch size

    Returns:
        Tokens
    """

    name = os.path.basename(os.path.normpath(data))
    folder = os.path.join(OUTPUT, "tokens", name)
    if os.path.isfile(os.path.join(folder, "meta.json")):
        return Tokens(folder)

    # pylint: disable=C0415
    from txtai_muvera import ColBERT
    from txtai_muvera.tools.evaluation import BEIR

    dataset = BEIR.load(data)
    encoder = ColBERT(model or os.path.join(OUTPUT, "standin"), threads=threads, batch=batch)

    start = time.perf_counter()
    documents = encoder.encode(list(dataset.corpus.values()), "data")
    seconds = time.perf_counter() - start
    queries = encoder.encode(list(dataset.queries.values()), "query")

    os.makedirs(folder + ".tmp", exist_ok=True)
    tokens, offsets = flat(documents, np.float16)
    qtokens, qoffsets = flat(queries, np.float32)
    np.save(os.path.join(folder + ".tmp", "documents.npy"), tokens)
    np.save(os.path.join(folder + ".tmp", "offsets.npy"), offsets)
    np.save(os.path.join(folder + ".tmp", "queries.npy"), qtokens)
    np.save(os.path.join(folder + ".tmp", "qoffsets.npy"), qoffsets)
    meta = {
        "name": name,
        "fingerprint": encoder.fingerprint,
        "docids": list(dataset.corpus),
        "queryids": list(dataset.queries),
        "qrels": dataset.qrels,
        "encode_s": round(seconds, 1),
    }
    with open(os.path.join(folder + ".tmp", "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    os.rename(folder + ".tmp", folder)

    sys.stdout.write(f"{name}: {len(documents)} documents encoded in {seconds:.0f} s, {len(tokens) / len(documents):.1f} tokens/doc\n")
    sys.stdout.flush()
    return Tokens(folder)


def saved(part):
    """
    Bytes of a saved FDE index or token store, per file.

    Args:
        part: FDEIndex or TokenStore

    Returns:
        dict of file name -> bytes
    """

    with tempfile.TemporaryDirectory(dir=OUTPUT) as folder:
        part.save(os.path.join(folder, "part"))
        return {name: os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names}


def exact(tokens, queries, path, depth=100):
    """
    Full exact MaxSim of every query against every unpooled float16 document, top depth per query, cached in path.

    Returns:
        list of int arrays (document positions, best first)
    """

    # pylint: disable=C0415
    from txtai_muvera.core.maxsim import maxsim_flat, topk

    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return [np.array(x, dtype=np.int64) for x in json.load(f)]

    results = []
    for query in queries:
        scores = np.concatenate(
            [
                maxsim_flat(query, tokens.tokens[tokens.offsets[a] : tokens.offsets[b]], tokens.offsets[a : b + 1] - tokens.offsets[a])
                for a, b in chunks(len(tokens.offsets) - 1, 1024)
            ]
        )
        results.append(topk(scores, depth)[0])

    with open(path, "w", encoding="utf-8") as f:
        json.dump([x.tolist() for x in results], f)

    return results


def chunks(n, size):
    """
    (start, end) pairs covering range(n) in steps of size.
    """

    return [(a, min(a + size, n)) for a in range(0, n, size)]


def ndcg(tokens, rankings, metrics):
    """
    ranx nDCG@10 of rankings (document positions per query, best first).
    """

    run = {uid: [tokens.docids[x] for x in ranking[:10]] for uid, ranking in zip(tokens.queryids, rankings)}
    return float(metrics(tokens.qrels, run)["ndcg@10"])


def fdes(tokens, queries, documents, names):
    """
    Builds every FDE variant and returns each one's top-300 candidates, sizes and search timings.

    Returns:
        dict of FDE name -> {"candidates": int64 (nq, 300), "bytes": {...}, "build_s", "search_ms": {depth: p50}}
    """

    # pylint: disable=C0415
    from txtai_muvera import FDEIndex, Muvera

    results = {}
    for setting, options in MUVERA.items():
        if not any(FDES[x][0] == setting for x in names):
            continue
        encoder = Muvera(repetitions=20, hashes=5, projection=16, seed=42, **options)
        dfdes, qfdes = encoder(documents, "data"), encoder(queries, "query")
        for name, (muvera, ann) in FDES.items():
            if muvera != setting or name not in names:
                continue

            index = FDEIndex(dfdes.shape[1], **json.loads(json.dumps(ann)))
            start = time.perf_counter()
            index.index(np.arange(len(dfdes)), dfdes)
            build = time.perf_counter() - start

            _, candidates = index.search(qfdes, max(CANDIDATES))
            timings = {}
            for depth in CANDIDATES:
                times = []
                for query in qfdes[:TIMED]:
                    start = time.perf_counter()
                    index.search(query, depth)
                    times.append(time.perf_counter() - start)
                timings[depth] = 1000 * float(np.median(times))

            files = saved(index)
            codes = codesize(index) * len(dfdes)
            results[name] = {
                "candidates": candidates,
                "dims": int(dfdes.shape[1]),
                "fde": codes / len(dfdes),
                "ann": (sum(files.values()) - codes) / len(dfdes),
                "config": index.config,
                "build_s": build,
                "search_ms": timings,
            }
            sys.stdout.write(f"  fde {name}: {results[name]['fde']:.0f} + {results[name]['ann']:.0f} B/doc, built in {build:.1f} s\n")
            sys.stdout.flush()

    return results


def codesize(index):
    """
    Bytes per vector of an FDE index's codes (what it stores per document, without ids, graphs or codebooks).
    """

    # pylint: disable=C0415
    import faiss

    if index.quantize == "binary":
        return index.dimensions // 8
    if index.quantize == "sq8":
        return index.dimensions
    if index.quantize == "pq" and index.trained:
        return index.pq["m"] * index.pq["nbits"] // 8

    del faiss
    return index.dimensions * 4


def store(pooled, codec, options):
    """
    Stores pooled documents with a codec, trained on a sample of the pooled tokens.

    Returns:
        (TokenStore, pooled tokens per document)
    """

    # pylint: disable=C0415
    from txtai_muvera.core.store import TokenStore

    result = TokenStore(pooled[0].shape[1], codec, **options)
    if not result.trained:
        rows = np.concatenate(pooled)
        rng = np.random.default_rng(0)
        result.train(rows[np.sort(rng.choice(len(rows), min(SAMPLE, len(rows)), replace=False))])
    result.add(np.arange(len(pooled)), pooled)
    return result, float(np.mean([len(x) for x in pooled]))


def rerank(tokenstore, queries, candidates, timed):
    """
    Exact MaxSim of each query against its candidates in the store.

    Args:
        tokenstore: TokenStore
        queries: query token matrices
        candidates: per query, int64 array of document positions (the union of every FDE variant's candidates)
        timed: per depth, per query, the candidates timed for latency (first TIMED queries)

    Returns:
        (list of dict position -> score, {depth: p50 ms of gather + MaxSim + top 10})
    """

    # pylint: disable=C0415
    from txtai_muvera.core.maxsim import maxsim_flat, topk

    scores = []
    for query, ids in zip(queries, candidates):
        tokens, offsets, scale = tokenstore.gather(ids, decode=False)
        scores.append(dict(zip(ids.tolist(), maxsim_flat(query, tokens, offsets, scale).tolist())))

    timings = {}
    for depth, lists in timed.items():
        times = []
        for query, ids in zip(queries, lists):
            start = time.perf_counter()
            tokens, offsets, scale = tokenstore.gather(ids, decode=False)
            topk(maxsim_flat(query, tokens, offsets, scale), 10)
            times.append(time.perf_counter() - start)
        timings[depth] = 1000 * float(np.median(times))

    return scores, timings


def grid(name, output, pools, codecs, names, limit=None):
    """
    Runs the grid on one cached dataset, appending one JSON line per (pool, codec, FDE, candidates) to output. limit keeps the
    first limit judged queries (the exact reference is computed over the same queries).
    """

    # pylint: disable=C0415
    from txtai_muvera.tools.evaluation import Metrics

    tokens, metrics = Tokens(os.path.join(OUTPUT, "tokens", name)), Metrics(["ndcg@10"])
    documents, queries = tokens.documents(), tokens.queries()
    if limit and limit < len(queries):
        queries, tokens.queryids = queries[:limit], tokens.queryids[:limit]
        tokens.qrels = {uid: tokens.qrels[uid] for uid in tokens.queryids}
    sys.stdout.write(f"{name}: {len(documents)} documents, {len(queries)} queries\n")

    os.makedirs(os.path.join(OUTPUT, "footprint"), exist_ok=True)
    reference = exact(tokens, queries, os.path.join(OUTPUT, "footprint", f"{name}-{len(queries)}-exact.json"))
    base = ndcg(tokens, reference, metrics)
    top10 = [set(x[:10].tolist()) for x in reference]
    sys.stdout.write(f"  exact MaxSim nDCG@10 {base:.4f}\n")

    variants = fdes(tokens, queries, documents, names)
    union = [np.unique(np.concatenate([v["candidates"][x] for v in variants.values()])) for x in range(len(queries))]
    union = [x[x >= 0] for x in union]
    timed = {d: [v[: d] for v in variants["none"]["candidates"][:TIMED]] for d in CANDIDATES}

    # pylint: disable=C0415
    from txtai_muvera.core.pooling import pool as pooling

    for pool in pools:
        start = time.perf_counter()
        pooled = pooling(documents, pool) if pool > 1 else documents
        pooling_s = time.perf_counter() - start
        for codec in codecs:
            start = time.perf_counter()
            tokenstore, length = store(pooled, *CODECS[codec])
            build = time.perf_counter() - start + pooling_s
            tokenbytes = sum(saved(tokenstore).values()) / len(documents)
            scores, rerankms = rerank(tokenstore, queries, union, timed)

            for fde, variant in variants.items():
                for depth in CANDIDATES:
                    rankings = []
                    for x, row in enumerate(variant["candidates"][:, :depth]):
                        row = row[row >= 0]
                        rankings.append(np.array(sorted(row.tolist(), key=lambda d, x=x: -scores[x][d]), dtype=np.int64))
                    value = ndcg(tokens, rankings, metrics)
                    line = {
                        "dataset": name,
                        "queries": len(queries),
                        "pool": pool,
                        "codec": codec,
                        "fde": fde,
                        "candidates": depth,
                        "ndcg": round(value, 5),
                        "exact": round(base, 5),
                        "relative": round(value / base, 5),
                        "recall": round(float(np.mean([len(t & set(c[:depth].tolist())) / 10 for t, c in zip(top10, variant["candidates"])])), 4),
                        "bytes_fde": round(variant["fde"], 1),
                        "bytes_ann": round(variant["ann"], 1),
                        "bytes_tokens": round(tokenbytes, 1),
                        "bytes": round(variant["fde"] + variant["ann"] + tokenbytes, 1),
                        "tokens_per_doc": round(length, 1),
                        "dims": variant["dims"],
                        "fde_ms": round(variant["search_ms"][depth], 3),
                        "rerank_ms": round(rerankms[depth], 3),
                        "latency_ms": round(variant["search_ms"][depth] + rerankms[depth], 3),
                        "fde_build_s": round(variant["build_s"], 1),
                        "store_build_s": round(build, 1),
                    }
                    with open(output, "a", encoding="utf-8") as f:
                        f.write(json.dumps(line) + "\n")
            sys.stdout.write(f"  pool {pool} {codec}: {tokenbytes:.0f} B/doc tokens, {length:.1f} tokens/doc, built in {build:.1f} s\n")
            sys.stdout.flush()


def pareto(rows):
    """
    Rows no other row beats on both bytes (lower) and worst relative nDCG (higher).
    """

    rows = sorted(rows, key=lambda x: (x["bytes"], -x["relative"]))
    front, best = [], -1.0
    for row in rows:
        if row["relative"] > best:
            front.append(row)
            best = row["relative"]

    return front


def combine(lines):
    """
    One row per setting over every dataset: mean bytes, worst and mean relative nDCG@10, worst recall, p50 latency (scifact).
    """

    settings = {}
    for x in lines:
        settings.setdefault((x["pool"], x["codec"], x["fde"], x["candidates"]), []).append(x)

    rows = []
    for (pool, codec, fde, depth), group in settings.items():
        scifact = [x for x in group if x["dataset"] == "scifact"] or group
        rows.append(
            {
                "pool": pool,
                "codec": codec,
                "fde": fde,
                "candidates": depth,
                "datasets": len(group),
                "bytes": float(max(x["bytes"] for x in group)),
                "bytes_fde": float(np.mean([x["bytes_fde"] for x in group])),
                "bytes_ann": float(np.mean([x["bytes_ann"] for x in group])),
                "bytes_tokens": float(np.mean([x["bytes_tokens"] for x in group])),
                "relative": min(x["relative"] for x in group),
                "mean": float(np.mean([x["relative"] for x in group])),
                "each": {x["dataset"]: x["relative"] for x in group},
                "recall": min(x["recall"] for x in group),
                "latency_ms": scifact[0]["latency_ms"],
            }
        )

    return rows


def report(path):
    """
    Writes docs/footprint.md (Pareto table, per-dataset rows of the chosen settings, full grid) and docs/footprint.png.
    """

    with open(path, encoding="utf-8") as f:
        lines = [json.loads(x) for x in f]

    rows = [x for x in combine(lines) if x["datasets"] == len(DATASETS)] or combine(lines)
    front = pareto(rows)

    def cells(x):
        each = " / ".join(f"{x['each'].get(d, float('nan')):.4f}" for d in DATASETS)
        return [x["pool"], x["codec"], x["fde"], x["candidates"], f"{x['bytes']:,.0f}", f"{x['bytes_fde']:,.0f}", f"{x['bytes_ann']:,.0f}",
                f"{x['bytes_tokens']:,.0f}", f"{x['relative']:.4f}", each, f"{x['recall']:.3f}", f"{x['latency_ms']:.2f}"]

    header = ["pool", "codec", "FDE", "candidates", "B/doc (largest set)", "FDE B", "ANN B", "tokens B", "worst rel. nDCG@10", "scifact / msmarco / dbpedia",
              "worst R10@cand", "p50 ms (scifact)"]

    def table(items):
        out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        out += ["| " + " | ".join(str(c) for c in cells(x)) + " |" for x in items]
        return "\n".join(out) + "\n"

    qualified = sorted([x for x in rows if x["relative"] >= 0.99], key=lambda x: x["bytes"])
    text = [
        "# Footprint grid\n",
        "Generated by `python benchmarks/footprint.py`. B/doc is the largest of the three sets (FDE / ANN / tokens columns: means);",
        "relative nDCG@10 is re-ranked",
        "nDCG@10 divided by exact MaxSim nDCG@10 (unpooled float16 tokens, brute force), worst of the three sets; R10@cand is the",
        "fraction of the exact MaxSim top 10 among the FDE candidates (worst set); p50 is FDE search + gather + MaxSim + top 10, one",
        "query at a time, on SciFact (components timed separately on a shared 2-core machine).\n",
        "## Pareto front (bytes against worst relative nDCG@10)\n",
        table(front),
        "## Smallest settings at >= 0.99 of exact nDCG@10 on every set\n",
        table(qualified[:25]),
        "## Every setting\n",
        table(sorted(rows, key=lambda x: x["bytes"])),
    ]
    os.makedirs(DOCS, exist_ok=True)
    with open(os.path.join(DOCS, "footprint.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(text))

    # pylint: disable=C0415
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 6))
    markers = {1: "o", 2: "s", 3: "^"}
    colours = {name: f"C{x}" for x, name in enumerate(CODECS)}
    for x in rows:
        axis.scatter(x["bytes"], x["relative"], marker=markers.get(x["pool"], "x"), color=colours.get(x["codec"], "k"), s=12, alpha=0.5)
    axis.plot([x["bytes"] for x in front], [x["relative"] for x in front], "k-", linewidth=1, label="Pareto front")
    for codec, colour in colours.items():
        axis.scatter([], [], color=colour, label=f"tokens {codec}")
    for pool, marker in markers.items():
        axis.scatter([], [], marker=marker, color="grey", label=f"pool {pool}")
    axis.axhline(0.99, color="red", linestyle=":", linewidth=1)
    axis.axvline(14000, color="red", linestyle=":", linewidth=1)
    axis.axvline(6000, color="orange", linestyle=":", linewidth=1)
    axis.set_xscale("log")
    axis.set_ylim(max(0.8, min(x["relative"] for x in rows) - 0.01), 1.02)
    axis.set_xlabel("bytes per document (FDE + ANN structure + tokens, largest of 3 sets)")
    axis.set_ylabel("re-ranked nDCG@10 / exact MaxSim nDCG@10 (worst of 3 sets)")
    axis.set_title("Footprint grid: MiniLM stand-in, scifact + msmarco-dl19-5k + dbpedia-5k")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(os.path.join(DOCS, "footprint.png"), dpi=110)
    sys.stdout.write(table(front))


def main():
    """
    Encodes missing datasets, runs the grid and writes the report.
    """

    parser = argparse.ArgumentParser(description="Footprint grid: bytes per document against re-ranked nDCG@10")
    parser.add_argument("--data", default=DATA, help="folder holding the BEIR datasets")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--pools", default="1,2,3")
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--fdes", default=",".join(FDES))
    parser.add_argument("--queries", type=int, default=None, help="keep the first N judged queries of each dataset")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1, help="faiss / torch threads (1: stable one-query timings on a shared machine)")
    parser.add_argument("--encode", action="store_true", help="only encode and cache the datasets")
    parser.add_argument("--report", action="store_true", help="only write the report from benchmarks/output/footprint.jsonl")
    parser.add_argument("--output", default=os.path.join(OUTPUT, "footprint.jsonl"))
    args = parser.parse_args()

    if not args.report:
        datasets = args.datasets.split(",")
        for name in datasets:
            load(os.path.join(args.data, name), args.model, args.threads)
        if args.encode:
            return

        # pylint: disable=C0415
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
        for name in datasets:
            grid(name, args.output, [int(x) for x in args.pools.split(",")], args.codecs.split(","), args.fdes.split(","), args.queries)

    report(args.output)


if __name__ == "__main__":
    main()
