"""
Scale benchmark: streams synthetic token matrices through the indexing path txtai uses (Encoded accumulator, then
MuveraIndex.index), with a final FDE projection, and reports peak memory against the data size, save time, memory-mapped load
and search latency. One JSON line per phase.

What is measured, explicitly: no text encoding. Token matrices are random L2-normalised (tokens x dim) float32 arrays made
fresh for every batch; their FDEs come from a pool of `pool` distinct matrices encoded once by Muvera(final=...), reused
cyclically, because encoding 200,000 documents with Muvera takes minutes on 2 shared cores and does not change the memory
picture (every batch still hands new arrays to the accumulator). The FDE index is exact (flat).

Each phase runs in its own process so that peak RSS (ru_maxrss) belongs to that phase alone.

    python benchmarks/scale.py --documents 200000 --final 2048
    python benchmarks/scale.py --documents 200000 --final 2048 --inmemory   # the accumulator before the spool file
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def rss():
    """
    Current and peak resident set size in MiB.
    """

    return status()["VmRSS"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reads():
    """
    Bytes this process read from storage so far, in MiB (page cache hits not counted).
    """

    with open("/proc/self/io", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes")) / 2**20


class Sampler(threading.Thread):
    """
    Samples RssAnon every 20 ms: its peak is the process memory a phase needed, file pages aside.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = 0.0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, status()["RssAnon"])
            time.sleep(0.02)


def status():
    """
    Memory lines of /proc/self/status in MiB: VmRSS, RssAnon (process memory) and RssFile (mapped file pages, which the
    kernel can write back and drop).
    """

    with open("/proc/self/status", encoding="utf-8") as f:
        return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in f if line.startswith(("VmRSS", "RssAnon", "RssFile"))}


def build(args):
    """
    Index phase: stream batches into an Encoded accumulator, build the MuveraIndex, save it.
    """

    # pylint: disable=C0415
    from txtai_muvera import MuveraIndex, Muvera
    from txtai_muvera.glue.batch import Encoded

    rng = np.random.default_rng(0)
    muvera = Muvera(repetitions=20, hashes=5, projection=16, seed=42, final=args.final)

    def matrices(count):
        lengths = rng.integers(args.tokens // 2, args.tokens * 3 // 2 + 1, size=count)
        result = []
        for length in lengths:
            matrix = rng.standard_normal((length, args.dim)).astype(np.float32)
            result.append(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))
        return result

    start = time.perf_counter()
    pool = muvera(matrices(args.pool), "data")
    fdetime = (time.perf_counter() - start) / args.pool

    settings = {"vectors": {}, "muvera": muvera.config, "fingerprint": "synthetic", "dim": args.dim}
    encoded = InMemory(settings) if args.inmemory else Encoded(settings)
    baseline, anon = rss()[0], status()["RssAnon"]
    sampler = Sampler()
    sampler.start()

    start = time.perf_counter()
    for offset in range(0, args.documents, args.batch):
        count = min(args.batch, args.documents - offset)
        encoded.add(pool[np.arange(offset, offset + count) % args.pool], matrices(count))
    streamed = rss()

    encoded.streamed = args.documents
    index = MuveraIndex({"muvera": muvera.config, "ann": {"index": "flat"}})
    index.index(encoded)
    del encoded
    indexed, split = rss(), status()
    elapsed = time.perf_counter() - start

    start = time.perf_counter()
    index.save(args.path)
    saved = time.perf_counter() - start
    peak = rss()[1]
    sampler.running = False
    sampler.join()

    fdes = args.documents * muvera.dimensions(args.dim) * 4
    tokens = index.store.nbytes
    return {
        "phase": "index",
        "accumulator": "inmemory" if args.inmemory else "spool",
        "documents": args.documents,
        "fde_dims": muvera.dimensions(args.dim),
        "token_rows": index.store.tokens,
        "fde_mib": round(fdes / 2**20),
        "tokens_mib": round(tokens / 2**20),
        "baseline_rss_mib": round(baseline),
        "rss_after_stream_mib": round(streamed[0]),
        "rss_after_index_mib": round(indexed[0]),
        "rss_anon_after_index_mib": round(split["RssAnon"]),
        "rss_file_after_index_mib": round(split["RssFile"]),
        "peak_rss_mib": round(indexed[1]),
        "peak_over_data": round((indexed[1] - baseline) / ((fdes + tokens) / 2**20), 2),
        "stream_and_index_s": round(elapsed, 1),
        "muvera_ms_per_doc_measured_on_pool": round(fdetime * 1000, 3),
        "save_s": round(saved, 1),
        "peak_rss_with_save_mib": round(peak),
        "baseline_rss_anon_mib": round(anon),
        "peak_rss_anon_with_save_mib": round(sampler.peak),
        "peak_anon_over_data": round((sampler.peak - anon) / ((fdes + tokens) / 2**20), 2),
    }


def search(args):
    """
    Search phase: memory-mapped load, then single-query searches with exact re-ranking.
    """

    # pylint: disable=C0415
    from txtai_muvera import MuveraIndex, Muvera
    from txtai_muvera.glue.batch import Queries

    with open(os.path.join(args.path, "header.json"), encoding="utf-8") as f:
        header = json.load(f)

    # Cold start: drop the token file from the page cache, so reads below are real reads
    tokenfile = os.path.join(args.path, "tokens", "tokens.npy")
    descriptor = os.open(tokenfile, os.O_RDONLY)
    os.fsync(descriptor)
    os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(descriptor)
    baseline, before, filepages = rss()[0], reads(), status()["RssFile"]

    muvera = Muvera(repetitions=20, hashes=5, projection=16, seed=42, final=args.final)
    index = MuveraIndex({"muvera": muvera.config, "ann": {"index": "flat"}, "candidates": args.candidates})
    start = time.perf_counter()
    index.load(args.path)
    loadtime = time.perf_counter() - start
    loaded, loadreads = rss(), reads() - before

    rng = np.random.default_rng(1)
    latencies = []
    for _ in range(args.queries):
        tokens = rng.standard_normal((32, args.dim)).astype(np.float32)
        tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
        query = Queries(muvera([tokens], "query"), [tokens])
        start = time.perf_counter()
        index.search(query, 10)
        latencies.append(time.perf_counter() - start)

    searched, split, searchreads = rss(), status(), reads() - before - loadreads
    return {
        "phase": "search",
        "documents": header["documents"],
        "load_s": round(loadtime, 2),
        "token_file_mib": round(os.path.getsize(tokenfile) / 2**20),
        "fde_file_mib": round(os.path.getsize(os.path.join(args.path, "fdes", "index.faiss")) / 2**20),
        "read_by_load_mib": round(loadreads),
        "read_by_searches_mib": round(searchreads, 1),
        "rss_after_load_mib": round(loaded[0] - baseline),
        "rss_after_searches_mib": round(searched[0] - baseline),
        "queries": args.queries,
        "rss_file_growth_mib": round(split["RssFile"] - filepages),
        "candidates": args.candidates,
        "latency_ms_p50": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)) * 1000, 1),
    }


class InMemory:
    """
    The accumulator as it was before this change: FDE batches kept in a list and concatenated when the backend asks, token
    matrices in an in-memory TokenStore tail.
    """

    def __init__(self, settings):
        # pylint: disable=C0415
        from txtai_muvera import TokenStore

        self.settings, self.fdes, self.store = settings, [], TokenStore(settings["dim"], "float16")
        self.error, self.truncated, self.streamed = None, 0, 0

    def add(self, fdes, tokens):
        start = len(self.store)
        self.store.add(np.arange(start, start + len(tokens)), tokens)
        self.fdes.append(np.asarray(fdes, dtype=np.float32))

    def __len__(self):
        return len(self.store)

    def vectors(self):
        return np.concatenate(self.fdes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--documents", type=int, default=200000)
    parser.add_argument("--final", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=32, help="mean document tokens (uniform in [t/2, 3t/2])")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--pool", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--inmemory", action="store_true")
    parser.add_argument("--phase", choices=["index", "search"])
    parser.add_argument("--path")
    args = parser.parse_args()

    if args.phase:
        print(json.dumps(build(args) if args.phase == "index" else search(args)), flush=True)
        return

    # Driver: each phase in a fresh process
    with tempfile.TemporaryDirectory() as directory:
        arguments = [x for x in sys.argv[1:]] + ["--path", os.path.join(directory, "index")]
        for phase in ["index", "search"]:
            subprocess.run([sys.executable, __file__, "--phase", phase] + arguments, check=True)


if __name__ == "__main__":
    main()
