"""
nDCG cost of each encoder path

Encodes each BEIR set's corpus and queries with one ColBERT inference path (torch float32, torch bfloat16, onnx float32, onnx int8), scores
every query against every document with exact MaxSim (txtai_muvera.core.maxsim) and prints one JSON line per set and path
with nDCG@10 and its ratio to the reference path (the first one listed, torch by default). Token matrices are cached under
benchmarks/output/encoder-ndcg/ (one .npy pair per set and path), so each corpus is encoded once per path.

Usage:
    nice -n 5 python benchmarks/encoder_ndcg.py [--paths torch,torch-half,onnx,onnx-int8] [--sets scifact,msmarco-dl19-5k,dbpedia-5k]
"""

import argparse
import json
import os
import time

import numpy as np

from txtai_muvera.core.maxsim import maxsim
from txtai_muvera.core.models import ColBERT
from txtai_muvera.tools.evaluation import BEIR, Metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

# Path name -> ColBERT options
PATHS = {"torch": {"device": "cpu"}, "torch-half": {"device": "cpu", "half": True}, "onnx": {"backend": "onnx"}, "onnx-int8": {"backend": "onnx", "quantize": "int8"}}


def encoded(model, texts, category, file):
    """
    Encodes texts, or reads the cached token matrices.

    Args:
        model: ColBERT
        texts: list of strings
        category: "query" or "data"
        file: cache file prefix

    Returns:
        (list of token matrices, seconds spent encoding or None when cached)
    """

    if os.path.isfile(f"{file}.tokens.npy"):
        tokens, offsets = np.load(f"{file}.tokens.npy", allow_pickle=False), np.load(f"{file}.offsets.npy", allow_pickle=False)
        return [tokens[offsets[x] : offsets[x + 1]] for x in range(len(offsets) - 1)], None

    start = time.perf_counter()
    matrices = model.encode(texts, category)
    elapsed = time.perf_counter() - start

    offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in matrices])
    np.save(f"{file}.tokens.npy", np.concatenate(matrices), allow_pickle=False)
    np.save(f"{file}.offsets.npy", offsets, allow_pickle=False)
    return matrices, elapsed


def main():
    """
    Runs the benchmark.
    """

    parser = argparse.ArgumentParser(description="Exact MaxSim nDCG@10 of each ColBERT inference path")
    parser.add_argument("--paths", default="torch,onnx,onnx-int8")
    parser.add_argument("--sets", default="scifact,msmarco-dl19-5k,dbpedia-5k")
    parser.add_argument("--model", default=os.path.join(ROOT, "benchmarks", "output", "standin"))
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "output", "encoder-ndcg"))
    args = parser.parse_args()

    paths = args.paths.split(",")
    unknown = [x for x in paths if x not in PATHS]
    if unknown:
        raise ValueError(f"Unknown path(s) {unknown}, accepted: {list(PATHS)}")

    os.makedirs(args.output, exist_ok=True)
    metrics = Metrics(["ndcg@10"])
    for name in args.sets.split(","):
        dataset = BEIR.load(os.path.join(SHARED, "data", "beir", name))
        ids, queries = list(dataset.corpus), list(dataset.queries)

        reference = None
        for path in paths:
            model = ColBERT(args.model, **PATHS[path])
            documents, seconds = encoded(model, [dataset.corpus[x] for x in ids], "data", os.path.join(args.output, f"{name}-{path}-corpus"))
            questions, _ = encoded(model, [dataset.queries[x] for x in queries], "query", os.path.join(args.output, f"{name}-{path}-queries"))

            # Exact MaxSim over the whole corpus, top 100 per query
            scores = maxsim(questions, documents)
            top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
            run = {uid: [ids[x] for x in row] for uid, row in zip(queries, top)}
            ndcg = metrics(dataset.qrels, run)["ndcg@10"]
            reference = ndcg if reference is None else reference

            result = {"dataset": name, "path": path, "documents": len(ids), "queries": len(queries), "ndcg@10": round(ndcg, 4)}
            result["ratio_vs_" + paths[0]] = round(ndcg / reference, 4)
            result["encode_docs_per_s"] = round(len(ids) / seconds, 1) if seconds else None
            result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
