"""
Encoder throughput benchmark

Encodes the same documents and queries with txtai_muvera's ColBERT on each inference path (torch float32, the reference;
torch bfloat16 (half=True); onnx float32; onnx int8; optionally the txtai-compatible mode) and with txtai 9.14's own late-interaction encoding
(PoolingFactory latepooling, no MUVERA), same checkpoint, same batch size, and prints one JSON line per model and encoder
with docs/s, queries/s and the ratio against txtai measured in the same run, plus the load average before and after.
Timed runs are interleaved (every encoder once per round, best round kept) so load from other processes hits all alike.

Usage:
    python benchmarks/encoder.py [--documents 512] [--queries 512] [--batch 32] [--threads N] [--repeat 3] [--compatible]

Texts come from shared/data/beir/scifact when present (title + " " + text), otherwise are synthetic. Models: the
pylate-tiny fixture and, when built (python benchmarks/standin.py), the stand-in checkpoint.
"""

import argparse
import json
import os
import random
import time

import torch

from txtai.models import PoolingFactory

from txtai_muvera.core.models import ColBERT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")


def texts(documents, queries):
    """
    Loads benchmark texts.

    Args:
        documents: number of documents
        queries: number of queries

    Returns:
        (documents, queries)
    """

    folder = os.path.join(SHARED, "data", "beir", "scifact")
    if os.path.isfile(os.path.join(folder, "corpus.jsonl")):
        with open(os.path.join(folder, "corpus.jsonl"), encoding="utf-8") as f:
            corpus = [json.loads(line) for _, line in zip(range(documents), f)]
        with open(os.path.join(folder, "queries.jsonl"), encoding="utf-8") as f:
            questions = [json.loads(line)["text"] for _, line in zip(range(queries), f)]

        return [f"{x.get('title', '')} {x.get('text', '')}".strip() for x in corpus], questions

    words = "late interaction retrieval token vector index search query document model encode score".split()
    generator = random.Random(0)
    return (
        [" ".join(generator.choices(words, k=generator.randint(20, 250))) for _ in range(documents)],
        [" ".join(generator.choices(words, k=generator.randint(3, 15))) for _ in range(queries)],
    )


def timed(function, repeat=1):
    """
    Runs function and returns the best wall time.

    Args:
        function: callable
        repeat: number of runs

    Returns:
        seconds
    """

    best = None
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)

    return best


def run(name, path, documents, queries, batch, repeat, compatible):
    """
    Benchmarks one checkpoint.

    Args:
        name: model name
        path: checkpoint folder
        documents: documents
        queries: queries
        batch: batch size
        repeat: timed rounds, the best is kept per encoder (shared machines are noisy)
        compatible: also time the txtai-compatible mode
    """

    txtai = PoolingFactory.create({"path": path, "method": "latepooling", "device": -1, "modelargs": {"muvera": None}})
    encoders = {
        "txtai": lambda x, category: txtai.encode(x, batch=batch, category=category),
        "colbert": ColBERT(path, device="cpu", batch=batch).encode,
        "colbert-half": ColBERT(path, device="cpu", batch=batch, half=True).encode,
        "colbert-onnx": ColBERT(path, batch=batch, backend="onnx").encode,
        "colbert-onnx-int8": ColBERT(path, batch=batch, backend="onnx", quantize="int8").encode,
    }
    if compatible:
        encoders["colbert-compatible"] = ColBERT(path, device="cpu", batch=batch, compatible=True).encode

    # Warm up every encoder once
    for encoder in encoders.values():
        encoder(documents[:batch], "data")
        encoder(queries[:batch], "query")

    # Rounds of every encoder in turn, best time per encoder and side
    load = os.getloadavg()
    best = {label: {"docs_per_s": 0.0, "queries_per_s": 0.0} for label in encoders}
    for _ in range(repeat):
        for label, encoder in encoders.items():
            rate = best[label]
            rate["docs_per_s"] = max(rate["docs_per_s"], len(documents) / timed(lambda encoder=encoder: encoder(documents, "data")))
            rate["queries_per_s"] = max(rate["queries_per_s"], len(queries) / timed(lambda encoder=encoder: encoder(queries, "query")))

    rates, load = best, [round(x, 2) for x in load + os.getloadavg()]

    for label, rate in rates.items():
        result = {
            "model": name,
            "encoder": label,
            "batch": batch,
            "documents": len(documents),
            "queries": len(queries),
            "threads": torch.get_num_threads(),
            "loadavg_before_after": load,
        }
        result.update({key: round(value, 1) for key, value in rate.items()})
        result["docs_ratio_vs_txtai"] = round(rate["docs_per_s"] / rates["txtai"]["docs_per_s"], 3)
        result["queries_ratio_vs_txtai"] = round(rate["queries_per_s"] / rates["txtai"]["queries_per_s"], 3)
        print(json.dumps(result), flush=True)


def main():
    """
    Runs the benchmark.
    """

    parser = argparse.ArgumentParser(description="ColBERT encoder throughput against txtai's LatePooling")
    parser.add_argument("--documents", type=int, default=512)
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compatible", action="store_true", help="also time ColBERT(compatible=True)")
    parser.add_argument("--standin", default=os.path.join(ROOT, "benchmarks", "output", "standin"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)

    documents, queries = texts(args.documents, args.queries)
    models = [("pylate-tiny", os.path.join(SHARED, "fixtures", "pylate-tiny", "model"))]
    if os.path.isfile(os.path.join(args.standin, "modules.json")):
        models.append(("standin-minilm", args.standin))

    for name, path in models:
        run(name, path, documents, queries, args.batch, args.repeat, args.compatible)


if __name__ == "__main__":
    main()
