"""
Stand-in quality runs: the all-MiniLM-L6-v2 stand-in checkpoint on the BEIR folders in ../shared/data/beir.

1. Through txtai_muvera.tools.evaluation (indexing with Embeddings(sparse=...), full MaxSim, MUVERA 20/5/16 + top-100 re-rank, MUVERA
   only; exact FDE search; ranx metrics).
2. Fill off against fill on, without encoding the corpus again: FDEs of every MUVERA setting are computed from the token matrices
   stored in the index of step 1 (float16), searched exactly, and the top 100 re-ranked by exact MaxSim over the same stored tokens.
   The fill=False row of this path is the control: it differs from step 1 only by FDEs computed from float16-stored tokens instead
   of the encoder's float32 output.

Usage:
    python benchmarks/evaluate_standin.py [--data ../shared/data/beir] [--datasets scifact,msmarco-dl19-5k,dbpedia-5k]

Writes benchmarks/output/standin.jsonl and benchmarks/output/standin-fill.jsonl and prints the tables. Built indexes are cached in
benchmarks/output/cache.
"""

import argparse
import importlib.util
import os
import sys

import numpy as np

from txtai_muvera import FDEIndex, Muvera
from txtai_muvera.tools.evaluation import BEIR, Metrics, Report, Run, evaluate
from txtai_muvera.core.maxsim import maxsim_flat, topk
from txtai_muvera.glue.pipeline import backend

# Benchmark folder and outputs
ROOT = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(ROOT, "output")


def standin(path):
    """
    Builds the stand-in checkpoint when missing: txtai_muvera.tools.standin when the package has it, else benchmarks/standin.py.

    Args:
        path: checkpoint folder

    Returns:
        path
    """

    if os.path.isfile(os.path.join(path, "1_Dense", "config.json")):
        return path

    try:
        # pylint: disable=C0415
        from txtai_muvera.tools.standin import build_standin
    except ImportError:
        spec = importlib.util.spec_from_file_location("standin", os.path.join(ROOT, "standin.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        build_standin = module.build_standin

    return build_standin(path)


def stored(store, batch=1024):
    """
    Reads every stored token matrix as float32, in index id order.

    Args:
        store: TokenStore
        batch: documents gathered at once

    Returns:
        list of (tokens, dim) arrays
    """

    matrices = []
    for start in range(0, len(store), batch):
        data, offsets, scale = store.gather(store.ids[start : start + batch])
        data = np.asarray(data, dtype=np.float32) * (scale[:, None] if scale is not None else 1)
        matrices.extend(np.split(data, offsets[1:-1]))

    return matrices


def fdemodes(embeddings, dataset, muvera, candidates=100):
    """
    MUVERA-only and MUVERA + re-rank runs with FDEs computed from an index's stored tokens (no re-encoding).

    Args:
        embeddings: Embeddings built by Run.index
        dataset: BEIR dataset
        muvera: Muvera options
        candidates: FDE candidates re-ranked

    Returns:
        {"muvera": run, "rerank": run} with runs as {query id: [document ids]}
    """

    store, docids = backend(embeddings).store, list(dataset.corpus)
    queries = embeddings.scoring.encoder.encode(list(dataset.queries.values()), "query")

    encoder = Muvera(**muvera)
    documents = encoder(stored(store), "data")
    index = FDEIndex(documents.shape[1], index="flat")
    index.index(np.arange(len(documents)), documents)
    _, ids = index.search(encoder(queries, "query"), candidates)

    runs = {"muvera": {}, "rerank": {}}
    for uid, query, row in zip(dataset.queries, queries, ids):
        row = row[row >= 0]
        runs["muvera"][uid] = [docids[x] for x in row]
        order, _ = topk(maxsim_flat(query, *store.gather(row, decode=False)), len(row))
        runs["rerank"][uid] = [docids[x] for x in row[order]]

    return runs


def main():
    """
    Runs the stand-in evaluation.
    """

    parser = argparse.ArgumentParser(description="Stand-in quality runs on BEIR-layout folders")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "..", "shared", "data", "beir"))
    parser.add_argument("--datasets", default="scifact,msmarco-dl19-5k,dbpedia-5k")
    parser.add_argument("--model", default=os.path.join(OUTPUT, "standin"))
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    model = standin(args.model)
    folders = [os.path.join(args.data, name) for name in args.datasets.split(",")]
    muvera = {"repetitions": 20, "hashes": 5, "projection": 16, "seed": 42, "fill": False}
    options = {
        "muvera": muvera,
        "candidates": args.candidates,
        "tokens": "float16",
        "ann": {"index": "flat"},
        "vectors": {"threads": args.threads, "batch": 32},
    }
    cache = os.path.join(OUTPUT, "cache")

    # 1. Through txtai, the package's search path
    report = evaluate(folders, model, cache=cache, **options)
    with open(os.path.join(OUTPUT, "standin.jsonl"), "w", encoding="utf-8") as f:
        f.write(report.jsonl())

    sys.stdout.write(f"\n## Through txtai: MUVERA 20/5/16 (fill off), {args.candidates} candidates, exact FDE search\n\n{report.table('rows')}\n")
    for row in report.rows:
        sys.stdout.write(f"{row['dataset']} {row['mode']}: {row['seconds']:.1f} s for {row['queries']} queries, indexing {row['indexing']} s\n")

    # 2. Fill off and on from the stored tokens of the same indexes (loaded from the cache)
    metrics, fills = Metrics(), Report()
    run = Run(model, cache=cache, **options)
    for folder in folders:
        dataset = BEIR.load(folder)
        embeddings = run.index(dataset)
        for fill in (False, True):
            for mode, ranking in fdemodes(embeddings, dataset, {**muvera, "fill": fill}, args.candidates).items():
                fills.add(dataset.name, f"{mode} fill={fill}", metrics(dataset.qrels, ranking), queries=len(dataset.queries), fill=fill)
        embeddings.close()

    with open(os.path.join(OUTPUT, "standin-fill.jsonl"), "w", encoding="utf-8") as f:
        f.write(fills.jsonl())

    sys.stdout.write(f"\n## Fill off / on, FDEs from stored float16 tokens, exact FDE search\n\n{fills.table('rows')}\n")


if __name__ == "__main__":
    main()
