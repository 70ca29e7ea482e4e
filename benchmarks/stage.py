"""
Re-ranking stage against its arithmetic bound, on real saved token stores.

For each token store given (e.g. the cached SciFact indexes of benchmarks/evaluate_standin.py in float32, float16 and int8, or
of `txtai-muvera evaluate` with residual tokens), times the gather of 100 candidates from the memory-mapped store as search
does it, the exact MaxSim kernel and both together (for residual / PQ codes also the stage that decodes the gather first), and
compares them with the arithmetic bound: query tokens x candidate tokens x dim multiply-adds at this machine's measured float32 matmul rate.

Usage:
    python benchmarks/stage.py benchmarks/output/cache/scifact-*/scoring/tokens
"""

import argparse
import json
import time

import numpy as np
import torch

from txtai_muvera.core.maxsim import maxsim_flat
from txtai_muvera.core.store import TokenStore


def median(function, runs=40):
    """
    Median wall time of a function in milliseconds, after one warm-up call.
    """

    function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)

    return float(np.median(times)) * 1e3


def rate():
    """
    Measured float32 matmul rate in multiply-adds per second.
    """

    a, b = torch.randn(4096, 384), torch.randn(384, 4096)
    return 4096 * 4096 * 384 / (median(lambda: a @ b, 10) / 1e3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stores", nargs="+", help="saved token store directories")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--query", type=int, default=21, help="query tokens")
    args = parser.parse_args()

    speed = rate()
    for path in args.stores:
        store = TokenStore.load(path, mmap=True)
        rng = np.random.default_rng(0)
        query = rng.standard_normal((args.query, store.dim)).astype(np.float32)
        candidates = rng.choice(store.ids, args.candidates, replace=False)

        # Warm page cache: a served index keeps its hot documents in memory. The search path's gather (decode False): codes
        # that are not stored as floats stay codes and the kernel scores them (residual without decoding)
        tokens, offsets, scale = store.gather(candidates, decode=False)
        bound = args.query * len(tokens) * store.dim / speed * 1e3

        result = {
            "store": path,
            "codec": store.codec.name,
            "candidate_tokens": len(tokens),
            "gather_ms": median(lambda: store.gather(candidates, decode=False)),
            "kernel_ms": median(lambda: maxsim_flat(query, tokens, offsets, scale)),
            "stage_ms": median(lambda: maxsim_flat(query, *store.gather(candidates, decode=False))),
            "bound_ms": bound,
            "matmul_gmacs": speed / 1e9,
        }
        if not store.codec.native:
            # The same stage decoding the whole gather to float32 first (what search did before codes were scored as codes)
            result["decoded_stage_ms"] = median(lambda: maxsim_flat(query, *store.gather(candidates)))
        result["stage_over_bound"] = result["stage_ms"] / bound
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
