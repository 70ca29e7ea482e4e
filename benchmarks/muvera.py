"""
Muvera benchmark: FDE throughput of txtai_muvera.Muvera against txtai's built-in Muvera on the same synthetic documents.

Prints one JSON line per measurement (documents per second) and the ratios measured in the same run.

    python benchmarks/muvera.py [--documents 20000] [--batch 1000] [--dim 128] [--threads N]
"""

import argparse
import json
import time

import numpy as np
import torch

from txtai.models.pooling.muvera import Muvera as TxtaiMuvera

from txtai_muvera.core.muvera import Muvera


def documents(count, dim, seed):
    """
    Builds L2-normalised random token matrices with 100 to 200 tokens each.

    Args:
        count: number of documents
        dim: token dims
        seed: random seed

    Returns:
        list of float32 matrices
    """

    rng = np.random.default_rng(seed)
    data = []
    for length in rng.integers(100, 201, size=count):
        matrix = rng.standard_normal((length, dim), dtype=np.float32)
        data.append(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))

    return data


def throughput(encoder, data, batch, category):
    """
    Encodes all documents batch by batch.

    Args:
        encoder: callable (data, category)
        data: token matrices
        batch: documents per call
        category: query or data

    Returns:
        (documents per second, wall seconds, process cpu seconds)
    """

    # Warm up (random matrix caches, thread pools)
    encoder(data[:batch], category)

    start, cpu = time.perf_counter(), time.process_time()
    for x in range(0, len(data), batch):
        encoder(data[x : x + batch], category)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu

    return len(data) / elapsed, elapsed, cpu


def main():
    """
    Runs the benchmark.
    """

    parser = argparse.ArgumentParser(description="MUVERA FDE throughput against txtai")
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--category", default="data", choices=["data", "query"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads, torch's default when unset")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)

    data = documents(args.documents, args.dim, 42)
    settings = {"repetitions": 20, "hashes": 5, "projection": 16, "seed": 42}

    # Wall time is the measure; process cpu time is printed too, as it is less disturbed by other load on a shared machine
    results, cpus = {}, {}
    for name, encoder in [
        ("txtai", TxtaiMuvera(**settings)),
        ("txtai_muvera", Muvera(**settings)),
        ("txtai_muvera_fill", Muvera(**settings, fill=True)),
    ]:
        rate, elapsed, cpu = throughput(encoder, data, args.batch, args.category)
        results[name], cpus[name] = rate, cpu
        row = {"encoder": name, "category": args.category, "documents": len(data), "batch": args.batch, "threads": torch.get_num_threads()}
        row.update(settings)
        print(
            json.dumps(
                {**row, "fill": name.endswith("fill"), "seconds": round(elapsed, 3), "cpu_seconds": round(cpu, 3), "docs_per_s": round(rate, 1)}
            )
        )

    print(
        json.dumps(
            {
                "ratio": round(results["txtai_muvera"] / results["txtai"], 2),
                "ratio_fill": round(results["txtai_muvera_fill"] / results["txtai"], 2),
                "ratio_cpu": round(cpus["txtai"] / cpus["txtai_muvera"], 2),
                "ratio_cpu_fill": round(cpus["txtai"] / cpus["txtai_muvera_fill"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
