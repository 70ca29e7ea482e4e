"""
Performance of txtai_muvera against stock txtai 9.14's late-interaction path, same model and data:

  - ours: Embeddings(sparse={"path": colbert, ...}) after `import txtai_muvera` (MUVERA FDEs + stored tokens, exact MaxSim re-rank)
  - stock: Embeddings(path=colbert) (txtai's LatePooling and its MUVERA dense vectors), and Similarity(path, lateencode=True) with
    txtai.pipeline.Reranker(embeddings, similarity) re-encoding its 100 candidates per query (uncached, and cached on a second pass)

Measured per system, each in its own subprocess so peak memory (RSS) is separate: indexing documents/s, query latency p50/p95 per
mode (one query per call, limit 10, 100 candidates), disk bytes per document of the saved files, the re-ranking stage alone (100
candidates), and the arithmetic bound of exact MaxSim at this machine's measured matmul rate.

Usage:
    python benchmarks/performance.py [--data ../shared/data/beir/scifact] [--max-docs N] [--sample 20] [--threads 2]

Writes benchmarks/output/performance.json and prints a table with ratios.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from evaluate_standin import OUTPUT, standin

# Results per query and candidates re-ranked (stock Reranker: limit x factor)
LIMIT, FACTOR = 10, 10


def percentiles(times):
    """
    p50 and p95 of a list of seconds, in milliseconds.

    Args:
        times: seconds

    Returns:
        dict
    """

    times = np.asarray(times) * 1000
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2), "n": len(times)}


def timed(function, queries):
    """
    Runs function on each query, one at a time.

    Args:
        function: callable taking a query
        queries: query texts

    Returns:
        (results, seconds per query)
    """

    results, times = [], []
    for query in queries:
        start = time.perf_counter()
        results.append(function(query))
        times.append(time.perf_counter() - start)

    return results, times


def disk(folder):
    """
    Bytes per file under a folder, keyed by path relative to it.

    Args:
        folder: folder

    Returns:
        dict
    """

    return {
        os.path.relpath(os.path.join(root, name), folder): os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(folder)
        for name in files
    }


def matmul(threads, dim=384, queries=32, tokens=18000, repeat=20):
    """
    Measures this machine's float32 matmul rate on MaxSim's shape: (tokens x dim) @ (dim x query tokens).

    Returns:
        multiply-adds per second
    """

    # pylint: disable=C0415
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(tokens, dim), torch.randn(dim, queries)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return tokens * dim * queries * repeat / (time.perf_counter() - start)


def ours(args, documents, queries, sample):
    """
    Measures txtai_muvera.

    Returns:
        dict of measurements
    """

    # pylint: disable=C0415
    import torch
    from txtai import Embeddings

    import txtai_muvera
    from txtai_muvera.core.maxsim import maxsim_flat, topk
    from txtai_muvera.glue.pipeline import backend

    torch.set_num_threads(args.threads)
    config = {
        "path": args.model,
        "muvera": {"repetitions": 20, "hashes": 5, "projection": 16},
        "tokens": "float16",
        "candidates": 100,
        "ann": {"index": args.index},
    }
    embeddings = Embeddings(sparse=config)

    start = time.perf_counter()
    embeddings.index(documents)
    indexing = time.perf_counter() - start

    reranker = txtai_muvera.Reranker(embeddings)
    reranker(queries[0], LIMIT)
    _, muvera = timed(lambda q: reranker(q, LIMIT, rerank=False), queries)
    _, rerank = timed(lambda q: reranker(q, LIMIT, candidates=LIMIT * FACTOR), queries)

    # Re-ranking stage alone: gather 100 candidates' stored tokens, exact MaxSim, top 10 (query already encoded)
    index = backend(embeddings)
    tokens = embeddings.scoring.encoder.encode(list(sample), "query")
    _, candidates = index.fdes.search(embeddings.scoring.muvera(tokens, "query"), LIMIT * FACTOR)
    stage, qtokens, dtokens = [], [], []
    for x in range(len(sample)):
        start = time.perf_counter()
        rows, offsets, scale = index.store.gather(candidates[x], decode=False)
        topk(maxsim_flat(tokens[x], rows, offsets, scale), LIMIT)
        stage.append(time.perf_counter() - start)
        qtokens.append(len(tokens[x]))
        dtokens.append(int(offsets[-1]))

    with tempfile.TemporaryDirectory() as folder:
        embeddings.save(folder)
        files = disk(folder)

    fde = sum(v for k, v in files.items() if "/fdes/" in f"/{k}")
    token = sum(v for k, v in files.items() if "/tokens/" in f"/{k}")
    return {
        "system": "txtai_muvera",
        "documents": len(documents),
        "indexing_s": round(indexing, 2),
        "docs_per_s": round(len(documents) / indexing, 2),
        "latency": {"muvera": percentiles(muvera), "muvera+rerank": percentiles(rerank)},
        "stage": {**percentiles(stage), "query_tokens": float(np.mean(qtokens)), "candidate_tokens": float(np.mean(dtokens))},
        "disk": {
            "fde_bytes_per_doc": round(fde / len(documents), 1),
            "token_bytes_per_doc": round(token / len(documents), 1),
            "total_bytes": sum(files.values()),
            "files": files,
        },
        "config": json.loads(json.dumps(embeddings.config, default=str)),
    }


def stock(args, documents, queries, sample):
    """
    Measures stock txtai 9.14.

    Returns:
        dict of measurements
    """

    # pylint: disable=C0415
    import torch
    from txtai import Embeddings
    from txtai.pipeline import Reranker, Similarity

    torch.set_num_threads(args.threads)
    embeddings = Embeddings(path=args.model, content=True)

    start = time.perf_counter()
    embeddings.index(documents)
    indexing = time.perf_counter() - start

    embeddings.search(queries[0], LIMIT)
    _, dense = timed(lambda q: embeddings.search(q, LIMIT), queries)

    similarity = Similarity(args.model, lateencode=True)
    uncached = Reranker(embeddings, similarity)
    uncached(sample[0], LIMIT, FACTOR)
    _, rerank = timed(lambda q: uncached(q, LIMIT, FACTOR), sample)

    # cache=True holds 1,000 documents: fewer than a pass over the sample re-ranks, so a second pass in the same order can miss
    cached = Reranker(embeddings, similarity, cache=True)
    timed(lambda q: cached(q, LIMIT, FACTOR), sample)
    _, second = timed(lambda q: cached(q, LIMIT, FACTOR), sample)

    # A cache large enough for every candidate of the sample
    large = Reranker(embeddings, similarity, cache=LIMIT * FACTOR * len(sample))
    timed(lambda q: large(q, LIMIT, FACTOR), sample)
    _, third = timed(lambda q: large(q, LIMIT, FACTOR), sample)

    # Re-ranking stage alone: the similarity pipeline over the 100 candidates' texts
    candidates = [[row["text"] for row in embeddings.search(q, LIMIT * FACTOR)] for q in sample]
    stage = []
    for query, texts in zip(sample, candidates):
        start = time.perf_counter()
        similarity(query, texts)
        stage.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as folder:
        embeddings.save(folder)
        files = disk(folder)

    vectors = sum(v for k, v in files.items() if k == "embeddings")
    return {
        "system": "stock txtai",
        "documents": len(documents),
        "indexing_s": round(indexing, 2),
        "docs_per_s": round(len(documents) / indexing, 2),
        "latency": {
            "stock dense MUVERA": percentiles(dense),
            "stock Reranker uncached": percentiles(rerank),
            "stock Reranker cached (2nd pass)": percentiles(second),
            f"stock Reranker cache={LIMIT * FACTOR * len(sample)} (2nd pass)": percentiles(third),
        },
        "stage": percentiles(stage),
        "disk": {"fde_bytes_per_doc": round(vectors / len(documents), 1), "total_bytes": sum(files.values()), "files": files},
        "config": json.loads(json.dumps(embeddings.config, default=str)),
    }


def child(args):
    """
    Runs one system in this process and writes its measurements as JSON to --result.
    """

    # pylint: disable=C0415
    from txtai_muvera.tools.evaluation import BEIR

    dataset = BEIR.load(args.data, maxdocs=args.max_docs)
    documents = dataset.documents()
    queries = list(dataset.queries.values())
    sample = queries[: args.sample]

    # Load average before and after: other processes on the machine inflate every timing
    load = os.getloadavg()[0]
    result = (ours if args.system == "ours" else stock)(args, documents, queries, sample)
    result["loadavg"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    result["queries"], result["sample"], result["threads"] = len(queries), len(sample), args.threads
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["matmul_madds_per_s"] = matmul(args.threads)

    with open(args.result, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


def report(results):
    """
    Prints the side-by-side table and ratios.

    Args:
        results: {"ours": dict, "stock": dict}
    """

    a, b = results["ours"], results["stock"]
    lines = [
        f"documents {a['documents']}, queries {a['queries']} (stock Reranker on the first {b['sample']}), limit {LIMIT}, {LIMIT * FACTOR} candidates, {a['threads']} threads",
        f"1-minute load average before/after: txtai_muvera {a.get('loadavg')}, stock {b.get('loadavg')}",
        "",
        "| measure | txtai_muvera | stock txtai | ratio stock/ours |",
        "|---|---|---|---|",
        f"| indexing docs/s | {a['docs_per_s']} | {b['docs_per_s']} | {b['docs_per_s'] / a['docs_per_s']:.2f} |",
        f"| peak RSS MB | {a['peak_rss_mb']} | {b['peak_rss_mb']} | {b['peak_rss_mb'] / a['peak_rss_mb']:.2f} |",
        f"| FDE bytes/doc | {a['disk']['fde_bytes_per_doc']} | {b['disk']['fde_bytes_per_doc']} | {b['disk']['fde_bytes_per_doc'] / a['disk']['fde_bytes_per_doc']:.2f} |",
        f"| token bytes/doc | {a['disk']['token_bytes_per_doc']} | - (not stored) | - |",
        f"| total saved bytes/doc (stock includes its content database) | {a['disk']['total_bytes'] / a['documents']:.1f} | {b['disk']['total_bytes'] / b['documents']:.1f} | - |",
    ]
    for name, value in {**a["latency"], **b["latency"]}.items():
        lines.append(
            f"| latency {name} p50 / p95 ms | {value['p50_ms'] if name in a['latency'] else '-'}"
            f"{' / ' + str(value['p95_ms']) if name in a['latency'] else ''} | "
            f"{str(value['p50_ms']) + ' / ' + str(value['p95_ms']) if name in b['latency'] else '-'} | - |"
        )

    ours, theirs = a["latency"]["muvera+rerank"]["p50_ms"], b["latency"]["stock Reranker uncached"]["p50_ms"]
    lines.append(f"| p50 ratio stock Reranker uncached / ours MUVERA+rerank | | | {theirs / ours:.1f} |")
    cached = b["latency"]["stock Reranker cached (2nd pass)"]["p50_ms"]
    lines.append(f"| p50 ratio stock Reranker cached / ours MUVERA+rerank | | | {cached / ours:.1f} |")
    large = [value for name, value in b["latency"].items() if name.startswith("stock Reranker cache=")]
    if large:
        lines.append(f"| p50 ratio stock Reranker large cache / ours MUVERA+rerank | | | {large[0]['p50_ms'] / ours:.1f} |")
    lines.append(
        f"| p50 ratio stock dense MUVERA / ours MUVERA only | | | {b['latency']['stock dense MUVERA']['p50_ms'] / a['latency']['muvera']['p50_ms']:.2f} |"
    )
    lines.append(
        f"| re-ranking stage alone, 100 candidates, p50 / p95 ms | {a['stage']['p50_ms']} / {a['stage']['p95_ms']} | {b['stage']['p50_ms']} / {b['stage']['p95_ms']} | {b['stage']['p50_ms'] / a['stage']['p50_ms']:.0f} |"
    )

    # Arithmetic bound: 2 x query tokens x candidate tokens x dim flops = query tokens x candidate tokens x dim multiply-adds
    dim = 384
    madds = a["stage"]["query_tokens"] * a["stage"]["candidate_tokens"] * dim
    bound = madds / a["matmul_madds_per_s"] * 1000
    lines.append("")
    lines.append(
        f"arithmetic bound of the re-ranking stage: {a['stage']['query_tokens']:.1f} query tokens x {a['stage']['candidate_tokens']:.0f} candidate tokens "
        f"x {dim} dims = {madds / 1e6:.1f} M multiply-adds (2 x that in flops) at the measured {a['matmul_madds_per_s'] / 1e9:.1f} G multiply-adds/s = {bound:.2f} ms; "
        f"measured stage p50 {a['stage']['p50_ms']} ms = {a['stage']['p50_ms'] / bound:.1f} x the bound"
    )

    sys.stdout.write("\n".join(lines) + "\n")
    return "\n".join(lines) + "\n"


def main():
    """
    Runs both systems, each in a subprocess, and prints the comparison.
    """

    parser = argparse.ArgumentParser(description="txtai_muvera against stock txtai late interaction")
    parser.add_argument("--data", default=os.path.join(OUTPUT, "..", "..", "..", "shared", "data", "beir", "scifact"))
    parser.add_argument("--model", default=os.path.join(OUTPUT, "standin"))
    parser.add_argument("--max-docs", type=int, default=None)
    parser.add_argument("--sample", type=int, default=20, help="queries timed with the stock Reranker")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--index", default="auto", help="txtai_muvera FDE index type")
    parser.add_argument("--systems", default="ours,stock", help="systems to measure now; the others are read from their last result file")
    parser.add_argument("--system", choices=["ours", "stock"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.system:
        child(args)
        return

    args.model = standin(args.model)
    results = {}
    for system in ("ours", "stock"):
        result = os.path.join(OUTPUT, f"performance-{system}.json")
        command = [sys.executable, os.path.abspath(__file__), "--system", system, "--result", result, "--data", args.data, "--model", args.model]
        command += ["--sample", str(args.sample), "--threads", str(args.threads), "--index", args.index]
        command += ["--max-docs", str(args.max_docs)] if args.max_docs else []
        if system in args.systems.split(","):
            subprocess.run(command, check=True)
        with open(result, encoding="utf-8") as f:
            results[system] = json.load(f)

    table = report(results)
    with open(os.path.join(OUTPUT, "performance.json"), "w", encoding="utf-8") as f:
        json.dump({**results, "table": table}, f, indent=2)


if __name__ == "__main__":
    main()
