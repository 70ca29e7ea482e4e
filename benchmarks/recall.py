"""
Recall of MUVERA against exact MaxSim: the fraction of each query's exact MaxSim top 10 found in the FDE top N (N = 10..1000),
for a grid of MUVERA settings and FDE index types, with dims and FDE bytes per document (size of the saved index files).

Token matrices come from a txtai_muvera index built by txtai_muvera.tools.evaluation (cached under benchmarks/output/cache, shared with
evaluate_standin.py): the FDEs of each setting are computed from the stored float16 tokens, so no document is re-encoded.

Usage:
    python benchmarks/recall.py [--data ../shared/data/beir/scifact] [--max-docs N] [--max-queries N]

Writes benchmarks/output/recall.jsonl, benchmarks/output/recall.md and benchmarks/output/recall.png (matplotlib).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from evaluate_standin import OUTPUT, standin, stored
from txtai_muvera import FDEIndex, Muvera, TokenStore
from txtai_muvera.tools.evaluation import BEIR, Run
from txtai_muvera.glue.pipeline import backend

# Candidate depths
DEPTHS = (10, 20, 50, 100, 200, 500, 1000)

# MUVERA settings: name -> Muvera options
SETTINGS = {
    "20/5/16": {"repetitions": 20, "hashes": 5, "projection": 16},
    "20/4/8": {"repetitions": 20, "hashes": 4, "projection": 8},
    "20/5/16 fill": {"repetitions": 20, "hashes": 5, "projection": 16, "fill": True},
    "20/5/16 final 4096": {"repetitions": 20, "hashes": 5, "projection": 16, "final": 4096},
    "20/5/16 final 2048": {"repetitions": 20, "hashes": 5, "projection": 16, "final": 2048},
}

# FDE index types: name -> FDEIndex options
INDEXES = {
    "flat": {"index": "flat"},
    "hnsw": {"index": "hnsw"},
    "ivf": {"index": "ivf"},
    "flat sq8": {"index": "flat", "quantize": "sq8"},
    "flat pq": {"index": "flat", "quantize": "pq"},
}


def size(index):
    """
    Bytes of an FDE index's or token store's saved files.

    Args:
        index: FDEIndex or TokenStore

    Returns:
        bytes
    """

    with tempfile.TemporaryDirectory() as folder:
        index.save(os.path.join(folder, "fdes"))
        return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(folder) for name in files)


def main():
    """
    Runs the recall grid.
    """

    parser = argparse.ArgumentParser(description="Recall of MUVERA FDE candidates against exact MaxSim")
    parser.add_argument("--data", default=os.path.join(OUTPUT, "..", "..", "..", "shared", "data", "beir", "scifact"))
    parser.add_argument("--model", default=os.path.join(OUTPUT, "standin"))
    parser.add_argument("--max-docs", type=int, default=None)
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--indexes", default="20/5/16,20/5/16 final 2048", help="settings run with every index type (others: flat only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", action="store_true", help="only redraw the table and plot from benchmarks/output/recall.jsonl")
    args = parser.parse_args()

    if args.plot:
        with open(os.path.join(OUTPUT, "recall.jsonl"), encoding="utf-8") as f:
            write([json.loads(line) for line in f])
        return

    # Same index settings as evaluate_standin.py, so its cached index is reused
    dataset = BEIR.load(args.data, maxqueries=args.max_queries, maxdocs=args.max_docs)
    run = Run(
        standin(args.model),
        muvera={"repetitions": 20, "hashes": 5, "projection": 16, "seed": 42, "fill": False},
        tokens="float16",
        ann={"index": "flat"},
        vectors={"threads": args.threads, "batch": 32},
        cache=os.path.join(OUTPUT, "cache"),
    )
    embeddings = run.index(dataset)
    texts = list(dataset.queries.values())

    # Exact MaxSim top 10 per query, and the query token matrices
    exact = [set(ids.tolist()) for ids, _ in run.exact(embeddings, texts, 10)]
    queries = embeddings.scoring.encoder.encode(list(texts), "query")
    documents = stored(backend(embeddings).store)
    embeddings.close()

    # Token storage per document, each dtype saved for real
    for dtype in ("float16", "int8", "float32"):
        store = TokenStore(documents[0].shape[1], dtype)
        store.add(np.arange(len(documents)), documents)
        line = {
            "dataset": dataset.name,
            "tokens": dtype,
            "bytes": round(size(store) / len(documents), 1),
            "tokens_per_doc": round(float(np.mean([len(x) for x in documents])), 1),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        with open(os.path.join(OUTPUT, "recall-tokens.jsonl"), "a" if dtype != "float16" else "w", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    grid = [x.strip() for x in args.indexes.split(",")]
    results = []
    for name, options in SETTINGS.items():
        encoder = Muvera(seed=42, **options)
        start = time.perf_counter()
        dfdes = encoder(documents, "data")
        encoding = time.perf_counter() - start
        qfdes = encoder(queries, "query")

        for kind in INDEXES if name in grid else ["flat"]:
            index = FDEIndex(dfdes.shape[1], **INDEXES[kind])
            start = time.perf_counter()
            index.index(np.arange(len(dfdes)), dfdes)
            building = time.perf_counter() - start

            start = time.perf_counter()
            _, ids = index.search(qfdes, max(DEPTHS))
            searching = (time.perf_counter() - start) / len(qfdes)

            recall = {f"recall@{n}": float(np.mean([len(top & set(row[:n].tolist())) / len(top) for top, row in zip(exact, ids)])) for n in DEPTHS}
            result = {
                "dataset": dataset.name,
                "setting": name,
                "index": kind,
                "muvera": encoder.config,
                "dims": int(dfdes.shape[1]),
                "bytes": round(size(index) / len(dfdes), 1),
                "documents": len(dfdes),
                "queries": len(qfdes),
                "encode_s": round(encoding, 2),
                "build_s": round(building, 2),
                "search_ms": round(searching * 1000, 2),
                **recall,
            }
            results.append(result)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()

    write(results)


def write(results):
    """
    Writes the JSON lines, the markdown table and the plot.

    Args:
        results: list of result dicts
    """

    with open(os.path.join(OUTPUT, "recall.jsonl"), "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(x) + "\n" for x in results))

    header = ["setting", "index", "dims", "bytes/doc"] + [f"R@{n}" for n in DEPTHS] + ["search ms/query (300 queries batched, k=1000)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for x in results:
        cells = [x["setting"], x["index"], x["dims"], f"{x['bytes']:,.0f}"] + [f"{x[f'recall@{n}']:.3f}" for n in DEPTHS] + [f"{x['search_ms']:.1f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    table = "\n".join(lines) + "\n"
    with open(os.path.join(OUTPUT, "recall.md"), "w", encoding="utf-8") as f:
        f.write(table)
    sys.stdout.write("\n" + table)

    # pylint: disable=C0415
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per MUVERA setting, one line style and marker per index type
    colours = {name: f"C{x}" for x, name in enumerate(SETTINGS)}
    styles = dict(zip(INDEXES, [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (1, 3)), "x")]))
    figure, axis = plt.subplots(figsize=(9, 6))
    for x in results:
        style, marker = styles[x["index"]]
        axis.plot(
            DEPTHS,
            [x[f"recall@{n}"] for n in DEPTHS],
            color=colours[x["setting"]],
            linestyle=style,
            marker=marker,
            label=f"{x['setting']} {x['index']} ({x['dims']} dims, {x['bytes']:,.0f} B/doc)",
        )
    axis.set_xscale("log")
    axis.set_xlabel("FDE candidates N")
    axis.set_ylabel("fraction of the exact MaxSim top 10 in the FDE top N")
    axis.set_title(f"MUVERA recall against exact MaxSim ({results[0]['dataset']}, {results[0]['documents']} documents)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(OUTPUT, "recall.png"), dpi=120)


if __name__ == "__main__":
    main()
