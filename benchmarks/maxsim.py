"""
MaxSim benchmark: per query latency of maxsim_flat against the arithmetic bound at this machine's matmul rate.

Run: python benchmarks/maxsim.py [--candidates 100] [--query 32] [--tokens 180] [--dim 128] [--runs 200]
"""

import argparse
import json
import time

import numpy as np
import torch

from txtai_muvera.core.maxsim import maxsim_flat
from txtai_muvera.core.store import TokenStore


def gflops(size=2048, runs=10):
    """
    Measures float32 matmul GFLOP/s on a square matrix product.
    """

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(runs):
        a @ b
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--query", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=180)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    rng = np.random.default_rng(0)

    # Best of several rate measurements: the bound uses the machine's attainable float32 matmul rate
    rate = max(gflops() for _ in range(3))

    # Documents with ~180 tokens (120-240), normalised rows
    documents = []
    for _ in range(args.candidates):
        x = rng.standard_normal((int(rng.integers(args.tokens * 2 // 3, args.tokens * 4 // 3 + 1)), args.dim)).astype(np.float32)
        documents.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    query = rng.standard_normal((args.query, args.dim)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)

    total = sum(len(x) for x in documents)
    bound = 2 * args.query * total * args.dim / (rate * 1e9) * 1e3
    print(json.dumps({"threads": torch.get_num_threads(), "matmul_gflops": round(rate, 1), "tokens": total, "bound_ms": round(bound, 3)}))

    for dtype in ("float32", "float16", "int8"):
        store = TokenStore(args.dim, dtype)
        store.add(range(args.candidates), documents)
        ids = rng.permutation(args.candidates)

        # Scoring only (tokens already gathered) and gather + scoring
        tokens, offsets, scale = store.gather(ids)
        runs = (("score", lambda: maxsim_flat(query, tokens, offsets, scale)), ("gather+score", lambda: maxsim_flat(query, *store.gather(ids))))
        for name, run in runs:
            for _ in range(10):
                run()
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1e3)
            p50, p95, best = np.percentile(times, 50), np.percentile(times, 95), min(times)
            print(
                json.dumps(
                    {
                        "dtype": dtype,
                        "path": name,
                        "p50_ms": round(p50, 3),
                        "p95_ms": round(p95, 3),
                        "min_ms": round(best, 3),
                        "p50_ratio_to_bound": round(p50 / bound, 2),
                        "min_ratio_to_bound": round(best / bound, 2),
                    }
                )
            )


if __name__ == "__main__":
    main()
