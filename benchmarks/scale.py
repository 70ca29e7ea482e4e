"""
Scale benchmark: N synthetic documents (default 1,000,000) through the core indexing path of the file storage engine (MUVERA FDEs
from the unpooled tokens, optional token pooling, a token codec store spilled to disk, an FDE index built from the first batch
and extended batch by batch), then save, load in a fresh process and search with exact MaxSim re-ranking.

Synthetic documents, not white noise: 128-dim tokens (the seed model's dim) drawn from a vocabulary of 50,000 word vectors
grouped in 2,000 topics (word = topic centre + noise), each document mixing 1-3 topics and a Zipf-distributed share of common
words, every token perturbed (context) and L2-normalised; lengths log-normal with median 60 tokens, clipped to 4..180 (mean
about 70: MS MARCO passage-like). Queries: 32 tokens, half copied (perturbed) from one target document, half from its topics.
Document i is a pure function of (seed, i), so the exact MaxSim top 10 of the recall queries is computed in the same streaming pass
(its time is excluded from the indexing rate).

    nohup nice -n 5 python benchmarks/scale.py --documents 1000000 > benchmarks/output/scale.log 2>&1 &

Every phase writes a JSON line to benchmarks/output/scale-<documents>.jsonl (partial results survive a stopped run).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(ROOT, "output")
DIM, WORDS, TOPICS = 128, 50000, 2000


class Generator:
    """
    Deterministic clustered synthetic token matrices.
    """

    def __init__(self, seed=7):
        rng = np.random.default_rng(seed)
        self.seed = seed
        centres = normalise(rng.standard_normal((TOPICS, DIM)).astype(np.float32))
        self.topic = rng.integers(0, TOPICS, WORDS)
        self.words = normalise(centres[self.topic] + 0.8 * normalise(rng.standard_normal((WORDS, DIM)).astype(np.float32)))

        # Words of each topic as rows of a padded table (counts per topic), and the common words
        order, self.counts = np.argsort(self.topic, kind="stable"), np.bincount(self.topic, minlength=TOPICS)
        self.table = np.zeros((TOPICS, self.counts.max()), dtype=np.int64)
        for topic, words in enumerate(np.split(order, np.cumsum(self.counts)[:-1])):
            self.table[topic, : len(words)] = words
        self.common = rng.permutation(WORDS)[:500]

    def lengths(self, rng, n):
        """
        Log-normal lengths, median 60, clipped to 4..180.
        """

        return np.clip(rng.lognormal(np.log(60), 0.6, n), 4, 180).astype(np.int64)

    def document(self, index):
        """
        Token matrix of document index.
        """

        rng = np.random.default_rng([self.seed, index])
        length = int(self.lengths(rng, 1)[0])
        topics = rng.integers(0, TOPICS, int(rng.integers(1, 4)))
        return self.tokens(rng, length, topics)

    def tokens(self, rng, length, topics, context=0.35):
        """
        length tokens: 20% common words (Zipf), the rest from the topics' words (Zipf within each topic), perturbed.
        """

        common = rng.random(length) < 0.2
        ids = np.empty(length, dtype=np.int64)
        ids[common] = self.common[np.minimum(rng.zipf(1.3, int(common.sum())) - 1, len(self.common) - 1)]
        picks = topics[rng.integers(0, len(topics), int((~common).sum()))]
        ranks = rng.zipf(1.5, len(picks)) - 1
        ids[~common] = self.table[picks, ranks % self.counts[picks]]

        rows = self.words[ids] + context * normalise(rng.standard_normal((length, DIM)).astype(np.float32))
        return normalise(rows)

    def batch(self, start, end):
        """
        Documents start..end-1.
        """

        return [self.document(x) for x in range(start, end)]

    def query(self, target, seed):
        """
        A 32-token query about document target.
        """

        rng = np.random.default_rng([self.seed, 10**9 + seed])
        document = self.document(target)
        copied = document[rng.integers(0, len(document), 16)] + 0.35 * normalise(rng.standard_normal((16, DIM)).astype(np.float32))
        topical = self.tokens(rng, 16, self.topic[rng.integers(0, WORDS, 1)])
        return normalise(np.concatenate([normalise(copied), topical]))


def normalise(rows):
    """
    L2-normalises rows.
    """

    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def memory():
    """
    Current RSS and peak RSS (ru_maxrss) in MiB.
    """

    with open("/proc/self/status", encoding="utf-8") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    return rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(output, line):
    """
    Appends a JSON line and echoes it.
    """

    line = {**line, "rss_mib": round(memory()[0]), "peak_rss_mib": round(memory()[1]), "load": os.getloadavg()[0]}
    with open(output, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def settings(args):
    """
    Index settings from the arguments.
    """

    codec = {"name": args.codec, **({"bits": args.bits} if args.codec == "residual" else {})}
    ann = {"index": args.index, "quantize": None if args.quantize == "none" else args.quantize}
    muvera = {"repetitions": 20, "hashes": 5, "projection": 16, "seed": 42, **({"final": args.final} if args.final else {})}
    return codec, ann, muvera


def build(args, output, folder):
    """
    Index phase: stream, encode, pool, store, index, save; exact MaxSim of the recall queries in the same pass.
    """

    # pylint: disable=C0415
    import faiss
    import torch

    from txtai_muvera import FDEIndex, Muvera, TokenStore
    from txtai_muvera.core.maxsim import maxsim_flat, topk
    from txtai_muvera.core.pooling import pool

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    generator, (codec, ann, muvera) = Generator(), settings(args)
    encoder = Muvera(**muvera)
    store = TokenStore(DIM, codec["name"], spill=True, **{k: v for k, v in codec.items() if k != "name"})
    fdes = FDEIndex(encoder.dimensions(DIM), **ann)

    rng = np.random.default_rng(1)
    targets = rng.integers(0, args.documents, args.queries)
    queries = [generator.query(int(t), x) for x, t in enumerate(targets)]
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]

    timings = {"generate": 0.0, "muvera": 0.0, "pool": 0.0, "store": 0.0, "index": 0.0, "exact": 0.0}
    tokens, start = 0, time.perf_counter()
    for a in range(0, args.documents, args.batch):
        b = min(a + args.batch, args.documents)
        clock = time.perf_counter()
        matrices = generator.batch(a, b)
        timings["generate"] += time.perf_counter() - clock
        tokens += sum(len(x) for x in matrices)

        clock = time.perf_counter()
        vectors = encoder(matrices, "data")
        timings["muvera"] += time.perf_counter() - clock

        clock = time.perf_counter()
        pooled = pool(matrices, args.pool) if args.pool > 1 else matrices
        timings["pool"] += time.perf_counter() - clock

        clock = time.perf_counter()
        if not store.trained:
            rows = np.concatenate(pooled)
            store.train(rows[np.random.default_rng(0).permutation(len(rows))[:65536]])
        store.add(np.arange(a, b), pooled)
        timings["store"] += time.perf_counter() - clock

        clock = time.perf_counter()
        if a == 0:
            fdes.index(np.arange(a, b), vectors)
        else:
            fdes.add(np.arange(a, b), vectors)
        timings["index"] += time.perf_counter() - clock

        # Exact MaxSim top 10 over the unpooled float32 tokens (not part of indexing)
        clock = time.perf_counter()
        offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in matrices])
        flat = np.concatenate(matrices)
        for x, query in enumerate(queries):
            scores = np.concatenate([best[x][0], maxsim_flat(query, flat, offsets)])
            ids = np.concatenate([best[x][1], np.arange(a, b, dtype=np.int64)])
            order, _ = topk(scores, 10)
            best[x] = (scores[order], ids[order])
        timings["exact"] += time.perf_counter() - clock

        if (b // args.batch) % args.every == 0 or b == args.documents:
            indexing = sum(v for k, v in timings.items() if k not in ("exact", "generate"))
            write(output, {"phase": "progress", "documents": b, "tokens": tokens, "seconds": {k: round(v, 1) for k, v in timings.items()},
                           "docs_per_s": round(b / indexing, 1), "wall_s": round(time.perf_counter() - start, 1)})

    clock = time.perf_counter()
    fdes.save(os.path.join(folder, "fdes"))
    store.save(os.path.join(folder, "tokens"))
    save = time.perf_counter() - clock

    np.save(os.path.join(folder, "queries.npy"), np.stack(queries))
    with open(os.path.join(folder, "exact.json"), "w", encoding="utf-8") as f:
        json.dump([x[1].tolist() for x in best], f)

    sizes = {part: sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(os.path.join(folder, part)) for n in ns) for part in ("fdes", "tokens")}
    indexing = sum(v for k, v in timings.items() if k not in ("exact", "generate"))
    write(output, {"phase": "index", "documents": args.documents, "tokens": tokens, "tokens_per_doc": round(tokens / args.documents, 1),
                   "codec": codec, "pool": args.pool, "ann": fdes.config, "muvera": encoder.config,
                   "seconds": {k: round(v, 1) for k, v in timings.items()}, "save_s": round(save, 1),
                   "docs_per_s": round(args.documents / indexing, 1), "bytes_per_doc": {k: round(v / args.documents, 1) for k, v in sizes.items()},
                   "bytes_per_doc_total": round(sum(sizes.values()) / args.documents, 1)})


def search(args, output, folder):
    """
    Search phase, in a fresh process: load (memory-mapped tokens), FDE recall of the exact top 10, search p50 / p95 with re-ranking.
    """

    # pylint: disable=C0415
    import faiss
    import torch

    from txtai_muvera import FDEIndex, Muvera, TokenStore
    from txtai_muvera.core.maxsim import maxsim_flat, topk

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    _, _, muvera = settings(args)

    clock = time.perf_counter()
    fdes = FDEIndex.load(os.path.join(folder, "fdes"))
    store = TokenStore.load(os.path.join(folder, "tokens"))
    load = time.perf_counter() - clock

    queries = np.load(os.path.join(folder, "queries.npy"))
    with open(os.path.join(folder, "exact.json"), encoding="utf-8") as f:
        exact = [set(x) for x in json.load(f)]

    encoder = Muvera(**muvera)
    for candidates, rescore in [(c, r) for c in args.candidates for r in (args.rescore if fdes.quantize == "binary" else [None])]:
        if rescore:
            fdes.binary["rescore"] = rescore
        recall, times = [], []
        for query, top in zip(queries, exact):
            clock = time.perf_counter()
            _, ids = fdes.search(encoder([query], "query"), candidates, efsearch=max(128, 2 * candidates))
            ids = ids[0][ids[0] >= 0]
            tokens, offsets, scale = store.gather(ids)
            topk(maxsim_flat(query, tokens, offsets, scale), 10)
            times.append(time.perf_counter() - clock)
            recall.append(len(top & set(ids.tolist())) / len(top))

        write(output, {"phase": "search", "candidates": candidates, "rescore": rescore, "queries": len(queries), "load_s": round(load, 2),
                       "recall_exact_top10": round(float(np.mean(recall)), 4), "p50_ms": round(1000 * float(np.percentile(times, 50)), 1),
                       "p95_ms": round(1000 * float(np.percentile(times, 95)), 1)})


def main():
    """
    Runs the index phase and the search phase, each in its own process.
    """

    parser = argparse.ArgumentParser(description="Indexes N synthetic documents through the core path, then searches them")
    parser.add_argument("--documents", type=int, default=1000000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--every", type=int, default=10, help="progress line every this many batches")
    parser.add_argument("--queries", type=int, default=16, help="recall queries (exact MaxSim computed while indexing)")
    parser.add_argument("--pool", type=int, default=1)
    parser.add_argument("--codec", default="residual")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--index", default="flat")
    parser.add_argument("--quantize", default="binary")
    parser.add_argument("--final", type=int, default=None)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--rescore", type=int, nargs="+", default=[4, 16], help="binary codes: Hamming candidates re-scored per result")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", default=None, help="index folder (default benchmarks/output/scale-<documents>)")
    parser.add_argument("--phase", choices=["all", "index", "search"], default="all")
    args = parser.parse_args()

    folder = args.folder or os.path.join(OUTPUT, f"scale-{args.documents}")
    output = os.path.join(OUTPUT, f"scale-{args.documents}.jsonl")

    if args.phase == "index":
        build(args, output, folder)
    elif args.phase == "search":
        search(args, output, folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        write(output, {"phase": "start", "args": vars(args), "disk_free_gb": round(shutil.disk_usage(folder).free / 2**30, 1)})
        for phase in ("index", "search"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--phase", phase, "--folder", folder], check=True)


if __name__ == "__main__":
    main()
