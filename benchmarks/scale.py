"""
Scale benchmark: N synthetic documents (default 1,000,000) indexed, saved, loaded in a fresh process and searched with exact
MaxSim re-ranking. Two paths:

  - scoring (default): the real indexing path, `MuveraScoring.insert` + `index()` (MUVERA FDEs, token pooling, the staged write,
    the storage engine's commit with its codec and FDE index) with the index's own settings (`--preset`, default compact), the
    tiny checkpoint shaped like neuml/colbert-muvera-micro loaded as the model and only its `encode` replaced by the synthetic generator (encoder excluded).
    Searches go through `MuveraScoring.batchsearch`. With --encoded N (default 10,000) a separate phase indexes N real texts (the
    shared BEIR corpora) through the same class with the real encoder, float32 and half=True: the encoder-included rate.
  - core: the core parts driven directly (MUVERA, pooling, a spilled TokenStore, FDEIndex), with a time per part.

Synthetic documents, not white noise: 128-dim tokens (neuml/colbert-muvera-micro's dim) drawn from a vocabulary of 50,000 word vectors
grouped in 2,000 topics (word = topic centre + noise), each document mixing 1-3 topics and a Zipf-distributed share of common
words, every token perturbed (context) and L2-normalised; lengths log-normal with median 60 tokens, clipped to 4..180 (mean
about 70: MS MARCO passage-like). Queries: 32 tokens, half copied (perturbed) from one target document, half from its topics.
Document i is a pure function of (seed, i), so the exact MaxSim top 10 of the recall queries is computed in the same streaming pass
(its time is excluded from the indexing rate).

    nohup nice -n 5 python benchmarks/scale.py --documents 1000000 > benchmarks/output/scale.log 2>&1 &
    python benchmarks/scale.py --path core --documents 1000000 --pool 2 --final 2048 --quantize sq8
    python benchmarks/scale.py --documents 1000000 --ann ivf --encoded 0     # IVF over the sq8 FDEs, searched at each --nprobe
    python benchmarks/scale.py --dataset wordnet-200k --queries 300 --checkpoint benchmarks/output/standin --encoded 0

With --dataset the documents are a cached real token set (benchmarks/peers/peers.py --encode) and the search phase adds nDCG@10
on its judged queries against exact MaxSim's. Every query is timed twice: the first pass reads token pages from disk (p50_ms),
the second finds them in the page cache, as a serving process would (warm_p50_ms).

Every phase writes a JSON line to benchmarks/output/scale-<documents>.jsonl (partial results survive a stopped run).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
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


class Cached:
    """
    A cached token set (benchmarks/peers/peers.py --encode, e.g. wordnet-200k) in place of the generator: document i is the
    corpus's i-th token matrix (float32), queries are its first judged queries, with their ids and the qrels for nDCG@10.
    """

    def __init__(self, name, queries):
        # pylint: disable=C0415
        from footprint import Tokens

        self.tokens = Tokens(os.path.join(OUTPUT, "tokens", name))
        self.size = len(self.tokens.offsets) - 1
        judged = [x for x, uid in enumerate(self.tokens.queryids) if uid in self.tokens.qrels][:queries]
        everything = self.tokens.queries()
        self.queries = [everything[x] for x in judged]
        self.queryids = [self.tokens.queryids[x] for x in judged]

    def document(self, index):
        """
        Token matrix of document index.
        """

        return np.asarray(self.tokens.tokens[self.tokens.offsets[index] : self.tokens.offsets[index + 1]], dtype=np.float32)

    def batch(self, start, end):
        """
        Documents start..end-1.
        """

        return [self.document(x) for x in range(start, end)]


def source(args):
    """
    Documents and recall queries of a run: (source with document(i), number of documents, query token matrices).
    """

    if args.dataset:
        cached = Cached(args.dataset, args.queries)
        return cached, cached.size, cached.queries

    generator = Generator()
    rng = np.random.default_rng(1)
    targets = rng.integers(0, args.documents, args.queries)
    return generator, args.documents, [generator.query(int(t), x) for x, t in enumerate(targets)]


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


class Sampler(threading.Thread):
    """
    Peak anonymous memory (heap, arrays: what the process needs) and peak file-backed resident memory (pages of memory-mapped
    spill and spool files, which the kernel can write back and drop), sampled from /proc/self/status every 0.1 s: ru_maxrss
    counts both.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.anon, self.file = 0, 0

    def run(self):
        while True:
            with open("/proc/self/status", encoding="utf-8") as f:
                values = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("RssAnon", "RssFile", "RssShmem"))}
            self.anon = max(self.anon, values.get("RssAnon", 0))
            self.file = max(self.file, values.get("RssFile", 0) + values.get("RssShmem", 0))
            time.sleep(0.1)


SAMPLER = Sampler()


def write(output, line):
    """
    Appends a JSON line and echoes it.
    """

    line = {**line, "rss_mib": round(memory()[0]), "peak_rss_mib": round(memory()[1]), "peak_anon_mib": round(SAMPLER.anon / 1024),
            "peak_file_mib": round(SAMPLER.file / 1024), "load": os.getloadavg()[0]}
    with open(output, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def latency(times):
    """
    p50 / p95 of search times in seconds, as milliseconds for a JSON line.
    """

    return {"p50_ms": round(1000 * float(np.percentile(times, 50)), 1), "p95_ms": round(1000 * float(np.percentile(times, 95)), 1)}


def sizes(folder):
    """
    Bytes on disk per part of a saved index folder: its fdes and tokens subfolders, "other" for files outside them.
    """

    totals = {}
    for root, _, names in os.walk(folder):
        part = os.path.relpath(root, folder).split(os.sep)[0]
        part = part if part in ("fdes", "tokens") else "other"
        for name in names:
            totals[part] = totals.get(part, 0) + os.path.getsize(os.path.join(root, name))

    return totals


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
        track(best, queries, matrices, np.arange(a, b, dtype=np.int64))
        timings["exact"] += time.perf_counter() - clock

        if (b // args.batch) % args.every == 0 or b == args.documents:
            indexing = sum(v for k, v in timings.items() if k not in ("exact", "generate"))
            write(output, {"phase": "progress", "documents": b, "tokens": tokens, "seconds": {k: round(v, 1) for k, v in timings.items()},
                           "docs_per_s": round(b / indexing, 1), "wall_s": round(time.perf_counter() - start, 1)})

    clock = time.perf_counter()
    fdes.save(os.path.join(folder, "fdes"))
    store.save(os.path.join(folder, "tokens"))
    save = time.perf_counter() - clock

    saved = sizes(folder)
    np.save(os.path.join(folder, "queries.npy"), np.stack(queries))
    with open(os.path.join(folder, "exact.json"), "w", encoding="utf-8") as f:
        json.dump([x[1].tolist() for x in best], f)

    indexing = sum(v for k, v in timings.items() if k not in ("exact", "generate"))
    write(output, {"phase": "index", "documents": args.documents, "tokens": tokens, "tokens_per_doc": round(tokens / args.documents, 1),
                   "codec": codec, "pool": args.pool, "ann": fdes.config, "muvera": encoder.config,
                   "seconds": {k: round(v, 1) for k, v in timings.items()}, "save_s": round(save, 1),
                   "docs_per_s": round(args.documents / indexing, 1), "bytes_per_doc": {k: round(v / args.documents, 1) for k, v in saved.items()},
                   "bytes_per_doc_total": round(sum(saved.values()) / args.documents, 1)})


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
            tokens, offsets, scale = store.gather(ids, decode=False)
            topk(maxsim_flat(query, tokens, offsets, scale), 10)
            times.append(time.perf_counter() - clock)
            recall.append(len(top & set(ids.tolist())) / len(top))

        write(output, {"phase": "search", "candidates": candidates, "rescore": rescore, "queries": len(queries), "load_s": round(load, 2),
                       "recall_exact_top10": round(float(np.mean(recall)), 4), **latency(times)})


SHARED = os.path.join(os.path.dirname(os.path.dirname(ROOT)), "shared")
CHECKPOINT = os.path.join(SHARED, "fixtures", "pylate-tiny", "model")


class Synthetic:
    """
    Stands in for the encoder of a MuveraScoring: a text is a document (or query) number, its token matrix comes from the
    generator. Tracks the exact MaxSim top 10 of the recall queries over every document it generates, and the time it spends
    (generation and exact scoring are not indexing).
    """

    def __init__(self, generator, queries):
        self.generator, self.queries = generator, queries
        self.best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        self.seconds, self.tokens = 0.0, 0

    def encode(self, texts, category="data", batch=None):
        """
        Token matrices of document or query numbers.
        """

        if category == "query":
            return [self.queries[int(x)] for x in texts]

        clock = time.perf_counter()
        ids = np.array([int(x) for x in texts], dtype=np.int64)
        matrices = [self.generator.document(int(x)) for x in ids]
        self.tokens += sum(len(x) for x in matrices)
        track(self.best, self.queries, matrices, ids)
        self.seconds += time.perf_counter() - clock
        return matrices


def scoringconfig(args):
    """
    MuveraScoring config of the scoring path.
    """

    config = {"method": "txtai_muvera.MuveraScoring", "path": args.checkpoint, "preset": args.preset, "vectors": {"device": "cpu"}}
    if args.ann:
        # The preset's FDE compression (sq8) is kept, only the index type changes
        config["ann"] = {"index": args.ann}

    return config


def buildscoring(args, output, folder):
    """
    Index phase of the scoring path: documents "0".."N-1" through MuveraScoring.insert in txtai-sized batches, one index() commit.
    """

    # pylint: disable=C0415
    import faiss
    import torch

    from txtai_muvera.glue.scoring import MuveraScoring

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    generator, documents, queries = source(args)

    scoring = MuveraScoring(scoringconfig(args))
    synthetic = Synthetic(generator, queries)
    scoring.encoder.encode = synthetic.encode
    write(output, {"phase": "config", "config": {k: v for k, v in scoring.config.items() if k != "vectors"}})

    start = time.perf_counter()
    for a in range(0, documents, args.batch):
        b = min(a + args.batch, documents)
        scoring.insert([(x, str(x), None) for x in range(a, b)], a)
        if (b // args.batch) % args.every == 0:
            elapsed = time.perf_counter() - start - synthetic.seconds
            write(output, {"phase": "progress", "documents": b, "docs_per_s": round(b / elapsed, 1), "wall_s": round(time.perf_counter() - start, 1)})

    staged = time.perf_counter() - start - synthetic.seconds
    write(output, {"phase": "staged", "documents": documents, "seconds": round(staged, 1), "staging_bytes": staging(scoring)})

    clock = time.perf_counter()
    scoring.index()
    commit = time.perf_counter() - clock

    clock = time.perf_counter()
    scoring.save(os.path.join(folder, "scoring"))
    save = time.perf_counter() - clock

    with open(os.path.join(folder, "queries.json"), "w", encoding="utf-8") as f:
        json.dump([x.tolist() for x in queries], f)
    with open(os.path.join(folder, "exact.json"), "w", encoding="utf-8") as f:
        json.dump({"ids": [x[1].tolist() for x in synthetic.best], "scores": [x[0].tolist() for x in synthetic.best]}, f)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(scoring.config, f)

    saved = sizes(os.path.join(folder, "scoring"))

    write(output, {"phase": "index", "path": "scoring", "documents": documents, "tokens": synthetic.tokens,
                   "tokens_per_doc": round(synthetic.tokens / documents, 1), "generate_and_exact_s": round(synthetic.seconds, 1),
                   "insert_s": round(staged, 1), "commit_s": round(commit, 1), "save_s": round(save, 1),
                   "docs_per_s": round(documents / (staged + commit), 1), "estimate": scoring.config.get("estimate"),
                   "bytes_per_doc": {k: round(v / documents, 1) for k, v in saved.items()},
                   "bytes_per_doc_total": round(sum(saved.values()) / documents, 1)})


def staging(scoring):
    """
    Bytes the staged write holds on disk (spooled FDEs and spilled tokens) before its commit.
    """

    staged, total = scoring.staged, 0
    if staged is None:
        return 0
    if staged.spool is not None:
        total += os.fstat(staged.spool.fileno()).st_size
    total += staged.store.nbytes
    return total


def searchscoring(args, output, folder):
    """
    Search phase of the scoring path, in a fresh process: MuveraScoring.load, recall of the exact top 10 in the FDE candidates
    and in the re-ranked top 10, batchsearch p50 / p95.
    """

    # pylint: disable=C0415
    import faiss
    import torch

    from txtai_muvera.core.options import SearchOptions
    from txtai_muvera.glue.scoring import MuveraScoring

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(folder, "exact.json"), encoding="utf-8") as f:
        exact = json.load(f)

    with open(os.path.join(folder, "queries.json"), encoding="utf-8") as f:
        queries = [np.array(x, dtype=np.float32) for x in json.load(f)]
    generator = Cached(args.dataset, args.queries) if args.dataset else Generator()
    scoring = MuveraScoring(config)
    scoring.encoder.encode = Synthetic(None, list(queries)).encode

    clock = time.perf_counter()
    scoring.load(os.path.join(folder, "scoring"))
    load = time.perf_counter() - clock

    # IVF indexes are searched at each --nprobe, HNSW at each --efsearch (none: the index's rule), flat indexes once
    kind = scoring.storage.fdes.kind
    depths = [(None, n) for n in args.nprobe] if kind == "ivf" else [(e, None) for e in args.efsearch or [None]] if kind == "hnsw" else [(None, None)]
    for candidates, (efsearch, nprobe) in ((c, d) for d in depths for c in args.candidates):
        options = SearchOptions(candidates=candidates, efsearch=efsearch, nprobe=nprobe)
        found, kept, ratio, times, warm, runs, exactruns = [], [], [], [], [], {}, {}
        for x, query in enumerate(queries):
            top, scores = set(exact["ids"][x]), exact["scores"][x]

            # Candidates alone (the FDE search), then the whole search timed
            _, ids = scoring.storage.search(scoring.muvera([query], "query"), candidates, options)
            found.append(len(top & set(ids[0][ids[0] >= 0].tolist())) / len(top))

            clock = time.perf_counter()
            with scoring.searching(options):
                results = scoring.batchsearch([str(x)], 10)[0]
            times.append(time.perf_counter() - clock)
            kept.append(len(top & {uid for uid, _ in results}) / len(top))
            if args.dataset:
                runs[generator.queryids[x]] = [generator.tokens.docids[int(uid)] for uid, _ in results]
                exactruns[generator.queryids[x]] = [generator.tokens.docids[int(uid)] for uid in exact["ids"][x]]

            # Exact MaxSim (float32, unpooled tokens) of the returned top 10 against the exact top 10's: near 1 when the
            # documents missed score like the ones found
            ratio.append(exactsum(generator, query, [uid for uid, _ in results]) / sum(scores) if len(results) == 10 else 0.0)

        # A second pass over the same queries: token pages the first pass read from disk are in the page cache now, as in a
        # serving process that has run for a while
        for x in range(len(queries)):
            clock = time.perf_counter()
            with scoring.searching(options):
                scoring.batchsearch([str(x)], 10)
            warm.append(time.perf_counter() - clock)

        write(output, {"phase": "search", "path": "scoring", "index": kind, "nprobe": nprobe, "efsearch": efsearch, "candidates": candidates,
                       "queries": len(queries), "load_s": round(load, 2),
                       "recall_exact_top10_in_candidates": round(float(np.mean(found)), 4),
                       "recall_exact_top10_in_results": round(float(np.mean(kept)), 4),
                       "exact_score_ratio_top10": round(float(np.mean(ratio)), 5), **latency(times),
                       **{f"warm_{k}": v for k, v in latency(warm).items()}, **judged(generator, runs, exactruns)})


def upsertscoring(args, output, folder):
    """
    Upsert phase of the scoring path, in a fresh process: the saved index loaded, then for each --upserts size N, N new
    synthetic documents inserted and N / 10 stored ones deleted in one write, committed with upsert(). The commit's time
    against N and against the index size shows what a commit costs: the write, or the index. Nothing is saved.
    """

    # pylint: disable=C0415
    import faiss
    import torch

    from txtai_muvera.glue.scoring import MuveraScoring

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)

    generator = Generator()
    scoring = MuveraScoring(config)
    synthetic = Synthetic(generator, [])
    scoring.encoder.encode = synthetic.encode
    scoring.load(os.path.join(folder, "scoring"))

    start = scoring.count()
    for size in args.upserts:
        synthetic.seconds, count = 0.0, scoring.count()
        clock = time.perf_counter()
        scoring.delete(list(range(start - size // 10, start)))
        for a in range(start, start + size, args.batch):
            b = min(a + args.batch, start + size)
            scoring.insert([(x, str(x), None) for x in range(a, b)], a)
        inserted = time.perf_counter() - clock - synthetic.seconds

        clock = time.perf_counter()
        scoring.upsert()
        commit = time.perf_counter() - clock
        write(output, {"phase": "upsert", "index_documents": count, "upserted": size, "deleted": size // 10, "insert_s": round(inserted, 2),
                       "commit_s": round(commit, 3), "commit_ms_per_doc": round(1000 * commit / size, 4), "documents_after": scoring.count()})
        start += size


def judged(source, runs, exactruns):
    """
    nDCG@10 of the results and of exact MaxSim on a cached set's judged queries (ranx, through the package's Metrics), with
    their ratio; nothing for synthetic documents.
    """

    if not runs:
        return {}

    # pylint: disable=C0415
    from txtai_muvera.tools.evaluation import Metrics

    metrics, qrels = Metrics(["ndcg@10"]), {uid: source.tokens.qrels[uid] for uid in runs}
    found, exact = metrics(qrels, runs)["ndcg@10"], metrics(qrels, exactruns)["ndcg@10"]
    return {"ndcg10": round(found, 4), "exact_ndcg10": round(exact, 4), "ndcg10_ratio": round(found / exact, 4)}


def exactsum(generator, query, ids):
    """
    Sum of the exact MaxSim scores (float32, unpooled tokens) of documents ids for query.
    """

    # pylint: disable=C0415
    from txtai_muvera.core.maxsim import maxsim

    return float(maxsim([query], [generator.document(int(x)) for x in ids]).sum())


def track(best, queries, matrices, ids):
    """
    Updates each query's running exact MaxSim top 10 (scores, ids), in place, with a batch of documents.

    Args:
        best: list of (scores, ids) per query
        queries: query token matrices
        matrices: the batch's document token matrices (float32, unpooled)
        ids: the batch's document ids
    """

    # pylint: disable=C0415
    from txtai_muvera.core.maxsim import maxsim, topk

    for x, row in enumerate(maxsim(queries, matrices)):
        scores, candidates = np.concatenate([best[x][0], row]), np.concatenate([best[x][1], ids])
        order, _ = topk(scores, 10)
        best[x] = (scores[order], candidates[order])


def encoded(args, output):
    """
    Encoder-included phase: N real texts (the shared BEIR corpora, in turn) through MuveraScoring with the real encoder,
    float32 and half=True, the same settings as the synthetic run.
    """

    # pylint: disable=C0415
    import torch

    from txtai_muvera.glue.scoring import MuveraScoring

    torch.set_num_threads(args.threads)
    texts = []
    for name in ("scifact", "msmarco-dl19-5k", "dbpedia-5k"):
        with open(os.path.join(SHARED, "data", "beir", name, "corpus.jsonl"), encoding="utf-8") as f:
            texts.extend(f"{row.get('title', '')} {row.get('text', '')}".strip() for row in map(json.loads, f))
    texts = texts[: args.encoded]

    for half in (False, True):
        config = scoringconfig(args)
        config["vectors"]["half"] = half
        scoring = MuveraScoring(config)
        clock = time.perf_counter()
        for a in range(0, len(texts), args.batch):
            scoring.insert([(x, texts[x], None) for x in range(a, min(a + args.batch, len(texts)))], a)
        scoring.index()
        elapsed = time.perf_counter() - clock
        write(output, {"phase": "encoder-included", "checkpoint": args.checkpoint, "half": half, "documents": len(texts),
                       "docs_per_s": round(len(texts) / elapsed, 1)})
        scoring.close()


def main():
    """
    Runs the index phase and the search phase, each in its own process.
    """

    parser = argparse.ArgumentParser(description="Indexes N synthetic documents, then searches them")
    parser.add_argument("--path", choices=["scoring", "core"], default="scoring", help="MuveraScoring (default) or the core parts")
    parser.add_argument("--preset", default="compact", help="scoring path: index preset (default compact, the package default)")
    parser.add_argument("--checkpoint", default=CHECKPOINT, help="scoring path: model loaded (default the pylate-tiny fixture)")
    parser.add_argument("--encoded", type=int, default=10000, help="scoring path: real texts indexed with the encoder (0: skip)")
    parser.add_argument("--ann", default=None, help="scoring path: FDE index type instead of the preset's (flat), e.g. ivf")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64], help="scoring path: IVF lists probed per search")
    parser.add_argument("--efsearch", type=int, nargs="+", default=None, help="scoring path: HNSW search depths (default the index's)")
    parser.add_argument("--documents", type=int, default=1000000)
    parser.add_argument("--dataset", default=None, help="scoring path: a cached token set (e.g. wordnet-200k) instead of synthetic documents")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--every", type=int, default=10, help="progress line every this many batches")
    parser.add_argument("--queries", type=int, default=16, help="recall queries (exact MaxSim computed while indexing)")
    parser.add_argument("--pool", type=int, default=1, help="core path")
    parser.add_argument("--codec", default="residual", help="core path")
    parser.add_argument("--bits", type=int, default=2, help="core path")
    parser.add_argument("--index", default="flat", help="core path")
    parser.add_argument("--quantize", default="binary", help="core path")
    parser.add_argument("--final", type=int, default=None, help="core path")
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--rescore", type=int, nargs="+", default=[4, 16], help="binary codes: Hamming candidates re-scored per result")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", default=None, help="index folder (default benchmarks/output/scale-<documents>)")
    parser.add_argument("--upserts", type=int, nargs="+", default=[1000, 10000], help="scoring path: upsert sizes timed on the saved index (synthetic only)")
    parser.add_argument("--phase", choices=["all", "index", "search", "upsert", "encoder"], default="all")
    args = parser.parse_args()

    SAMPLER.start()
    name = f"scale-{args.documents}" if args.path == "core" else f"scale-scoring-{args.dataset or args.documents}" + (f"-{args.ann}" if args.ann else "")
    folder = args.folder or os.path.join(OUTPUT, name)
    output = os.path.join(OUTPUT, f"{name}.jsonl")

    if args.phase == "index":
        (buildscoring if args.path == "scoring" else build)(args, output, folder)
    elif args.phase == "search":
        (searchscoring if args.path == "scoring" else search)(args, output, folder)
    elif args.phase == "upsert":
        upsertscoring(args, output, folder)
    elif args.phase == "encoder":
        encoded(args, output)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        write(output, {"phase": "start", "args": vars(args), "disk_free_gb": round(shutil.disk_usage(folder).free / 2**30, 1)})
        phases = ("index", "search") + (("upsert",) if args.path == "scoring" and not args.dataset and args.upserts else ()) + (("encoder",) if args.path == "scoring" and args.encoded else ())
        for phase in phases:
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--phase", phase, "--folder", folder], check=True)


if __name__ == "__main__":
    main()
