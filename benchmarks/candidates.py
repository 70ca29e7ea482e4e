"""
FDE candidate structures at scale: how much of each query's exact MaxSim top 10 the first stage hands to re-ranking, and what a
single query costs, for the faiss structures that can replace a flat scan of every FDE.

FDEs are the default index's: MUVERA 20/5/16 count-sketched to 2,048 dims, from the unpooled token matrices. Exact MaxSim is brute
force over every document's float tokens. Corpora:
  - a cached token set (benchmarks/peers/peers.py --encode, e.g. wordnet-200k: 198,257 real WordNet senses, stand-in tokens)
  - --synthetic N: benchmarks/scale.py's clustered 128-dim documents (N of them) and its 32-token queries

    python benchmarks/candidates.py --dataset wordnet-200k --queries 300
    python benchmarks/candidates.py --synthetic 1000000 --queries 50

FDEs and the exact top 10 are cached under benchmarks/output/candidates/<corpus>/. Every structure is searched one query at a time
(faiss threads as --threads); one JSON line per (structure, depth) goes to benchmarks/output/candidates.jsonl.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pylint: disable=C0413
from footprint import OUTPUT, Tokens, chunks

DEPTHS = (300, 1000)
MUVERA = {"repetitions": 20, "hashes": 5, "projection": 16, "seed": 42, "final": 2048}


def log(text):
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def cached(args):
    """
    Corpus name, document FDEs (float16 memory map), query FDEs and each query's exact top 10, computed once and cached.
    """

    # pylint: disable=C0415
    from txtai_muvera import Muvera
    from txtai_muvera.core.maxsim import maxsim

    name = args.dataset or f"synthetic-{args.synthetic}"
    folder = os.path.join(OUTPUT, "candidates", f"{name}-{args.queries}")
    paths = [os.path.join(folder, x) for x in ("fdes.npy", "queries.npy", "exact.npy")]
    if all(os.path.isfile(x) for x in paths):
        return name, np.load(paths[0], mmap_mode="r"), np.load(paths[1]), np.load(paths[2])

    encoder = Muvera(**MUVERA)
    if args.dataset:
        tokens = Tokens(os.path.join(OUTPUT, "tokens", args.dataset))
        queries, total = tokens.queries()[: args.queries], len(tokens.offsets) - 1

        def batch(a, b):
            return [np.asarray(x, dtype=np.float32) for x in np.split(tokens.tokens[tokens.offsets[a] : tokens.offsets[b]], tokens.offsets[a + 1 : b] - tokens.offsets[a])]

    else:
        from scale import Generator

        generator, total = Generator(), args.synthetic
        targets = np.random.default_rng(1).integers(0, total, args.queries)
        queries = [generator.query(int(t), x) for x, t in enumerate(targets)]

        def batch(a, b):
            return generator.batch(a, b)

    os.makedirs(folder, exist_ok=True)
    fdes = np.lib.format.open_memmap(paths[0] + ".tmp.npy", mode="w+", dtype=np.float16, shape=(total, MUVERA["final"]))
    best = np.full((len(queries), 10), -np.inf, dtype=np.float32), np.full((len(queries), 10), -1, dtype=np.int64)
    start = time.perf_counter()
    for a, b in chunks(total, 8192):
        matrices = batch(a, b)
        fdes[a:b] = encoder(matrices, "data")
        values = np.concatenate([best[0], maxsim(queries, matrices)], axis=1)
        ids = np.concatenate([best[1], np.broadcast_to(np.arange(a, b), (len(queries), b - a))], axis=1)
        order = np.argsort(-values, axis=1, kind="stable")[:, :10]
        best = np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1)
        log(f"{name}: {b:,} of {total:,} documents, {time.perf_counter() - start:.0f} s")

    fdes.flush()
    del fdes
    os.rename(paths[0] + ".tmp.npy", paths[0])
    np.save(paths[1], encoder(queries, "query").astype(np.float32))
    np.save(paths[2], best[1])
    return cached(args)


def structures(n, d):
    """
    Candidate structures by name: a function that returns a new untrained faiss index, and search parameters.
    """

    # pylint: disable=C0415
    import faiss

    ip, sq8 = faiss.METRIC_INNER_PRODUCT, faiss.ScalarQuantizer.QT_8bit

    def refined(base, factor):
        index = faiss.IndexRefine(base, faiss.IndexScalarQuantizer(d, sq8, ip))
        index.own_fields = True
        base.this.disown()
        index.k_factor = factor
        return index

    def ivf(m, nlist):
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, m, 4, ip)
        index.own_fields = True
        quantizer.this.disown()
        return index

    def product(m, factor):
        # pylint: disable=C0415
        from txtai_muvera.core.ann import FDEIndex

        return FDEIndex(d, "fastscan", "sq8", fastscan={"m": m, "factor": factor, "threshold": 0})

    nlist = 1 << int(round(np.log2(4 * np.sqrt(n))))
    return {
        "flat sq8": (lambda: faiss.IndexScalarQuantizer(d, sq8, ip), [{}]),
        "pq-fs m256 + sq8 x4": (lambda: refined(faiss.IndexPQFastScan(d, 256, 4, ip), 4), [{}]),
        "pq-fs m512 + sq8 x4": (lambda: refined(faiss.IndexPQFastScan(d, 512, 4, ip), 4), [{}]),
        "pq-fs m512 + sq8 x8": (lambda: refined(faiss.IndexPQFastScan(d, 512, 4, ip), 8), [{}]),
        f"ivf{nlist} pq-fs m256 + sq8 x4": (lambda: refined(ivf(256, nlist), 4), [{"nprobe": x} for x in (32, 128, 512)]),
        "FDEIndex fastscan m256 x4": (lambda: product(256, 4), [{}]),
        "FDEIndex fastscan m256 x8": (lambda: product(256, 8), [{}]),
    }


def run(args):
    """
    Builds each structure and measures it.
    """

    # pylint: disable=C0415
    import faiss

    faiss.omp_set_num_threads(args.threads)
    name, fdes, queries, exact = cached(args)
    n, d = fdes.shape
    output = os.path.join(OUTPUT, "candidates.jsonl")
    chosen = structures(n, d)
    for key in args.structures.split(",") if args.structures else [x for x in chosen if not x.startswith("ivf")]:
        factory, settings = chosen[key]
        index, start = factory(), time.perf_counter()
        if key.startswith("FDEIndex"):
            # The package's own index: built from a first block, then extended block by block, as a write would
            for a, b in chunks(n, 65536):
                (index.add if a else index.index)(np.arange(a, b), np.asarray(fdes[a:b], dtype=np.float32))
            trained = built = time.perf_counter() - start
            size = (len(faiss.serialize_index(index.backend)) + len(faiss.serialize_index(index.scan))) / n
        else:
            rows = np.sort(np.random.default_rng(0).choice(n, min(n, args.train), replace=False))
            index.train(np.asarray(fdes[rows], dtype=np.float32))
            trained = time.perf_counter() - start
            for a, b in chunks(n, 65536):
                index.add(np.asarray(fdes[a:b], dtype=np.float32))
            built = time.perf_counter() - start
            size = len(faiss.serialize_index(index)) / n
        log(f"{key}: built in {built:.0f} s ({trained:.0f} s training), {size:,.0f} B/doc")

        for setting in settings:
            for depth in DEPTHS:
                params = None
                if setting:
                    base = faiss.SearchParametersIVF(nprobe=setting["nprobe"])
                    params = faiss.IndexRefineSearchParameters(k_factor=index.k_factor, base_index_params=base)
                times, found = [], []
                for x, query in enumerate(queries):
                    clock = time.perf_counter()
                    _, ids = index.search(query[None], depth, params=params) if params else index.search(query[None], depth)
                    times.append(time.perf_counter() - clock)
                    found.append(len(set(ids[0].tolist()) & set(exact[x].tolist())) / 10)
                line = {"corpus": name, "documents": n, "queries": len(queries), "structure": key, **setting, "depth": depth,
                        "recall10": round(float(np.mean(found)), 4), "p50_ms": round(1000 * float(np.percentile(times, 50)), 1),
                        "p95_ms": round(1000 * float(np.percentile(times, 95)), 1), "bytes_per_doc": round(size), "build_s": round(built, 1),
                        "train_s": round(trained, 1), "threads": args.threads, "load": os.getloadavg()[0]}
                with open(output, "a", encoding="utf-8") as f:
                    f.write(json.dumps(line) + "\n")
                print(json.dumps(line), flush=True)
        del index


def main():
    """
    Parses arguments and runs.
    """

    parser = argparse.ArgumentParser(description="FDE candidate structures at scale: recall of the exact MaxSim top 10 and latency")
    parser.add_argument("--dataset", default=None, help="cached token set under benchmarks/output/tokens")
    parser.add_argument("--synthetic", type=int, default=None, help="number of synthetic documents (benchmarks/scale.py's generator)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--structures", default=None, help="comma separated names (default all)")
    parser.add_argument("--train", type=int, default=65536, help="FDEs the quantizers train on")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if bool(args.dataset) == bool(args.synthetic):
        parser.error("give one of --dataset and --synthetic")
    run(args)


if __name__ == "__main__":
    main()
