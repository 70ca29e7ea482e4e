"""
PostgreSQL storage engine against the file engine, same inputs and settings, one run.

1. `scifact`: the stand-in checkpoint encodes SciFact once (cached); both engines store the same FDEs and token matrices
   (float16 tokens, 100 candidates re-ranked by exact MaxSim) and answer the same query FDEs. Per engine: storage writes in
   documents/s, search p50/p95 (candidates + gather + MaxSim, query encoding excluded: it is the same for both), bytes per
   document, nDCG@10 and the recall of the exact FDE top 100 among the candidates.
2. `synthetic`: N synthetic documents (benchmarks/scale.py's Generator: 128-dim clustered tokens, ~70 per document) indexed
   through MuveraScoring with the compact preset, once with the file engine and once per `--index` with the PostgreSQL
   engine (`backend: pgvector`), only the encoder's `encode` replaced by the generator. The file engine's first write runs
   the calibration ladder; its chosen token settings (pool, codec) are given to the PostgreSQL indexes, which then skip the
   ladder. Per engine: storage write rate (the engine's commit; MUVERA, pooling and staging reported apart), bytes by part
   (heap, TOAST, HNSW and primary key for PostgreSQL; fdes and tokens folders for files), peak memory of this process and of
   the server, search p50/p95 (candidates + gather + MaxSim, the engines interleaved query by query) with the time per part,
   the recall of the exact MaxSim top 10 (computed over every document while indexing) among the candidates and in the
   results, and the plan of one candidate query (EXPLAIN ANALYZE, BUFFERS). For docs/scale-out.md.

Usage (a running PostgreSQL with pgvector; `.ci/postgres start` prints a URL):
    python benchmarks/postgres.py scifact --url postgresql+psycopg2://postgres@127.0.0.1:54329/muvera
    python benchmarks/postgres.py synthetic --url ... --documents 20000 --index halfvec sketch

Prints one JSON line per result and appends it to benchmarks/output/pgvector.jsonl.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pylint: disable=C0413
from txtai_muvera.core import storage
from txtai_muvera.core.maxsim import maxsim_flat, topk
from txtai_muvera.core.muvera import Muvera
from txtai_muvera.core.options import SearchOptions

ROOT = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(ROOT, "output")

# The synthetic documents and queries of the scale benchmark
sys.path.insert(0, ROOT)
import scale  # noqa: E402  pylint: disable=C0411,C0413


def encode(data, model, cache):
    """
    Encodes SciFact with the stand-in once: FDEs from float32 tokens, tokens kept as float16.

    Returns:
        dict of arrays
    """

    if os.path.isfile(cache):
        return dict(np.load(cache))

    # pylint: disable=C0415
    from txtai_muvera import ColBERT
    from txtai_muvera.tools.evaluation import BEIR

    dataset = BEIR.load(data)
    encoder, muvera = ColBERT(model), Muvera()
    documents, queries = list(dataset.corpus.items()), list(dataset.queries.items())

    start = time.perf_counter()
    matrices = encoder.encode([text for _, text in documents], "data")
    qmatrices = encoder.encode([text for _, text in queries], "query")
    result = {
        "docids": np.array([uid for uid, _ in documents]),
        "qids": np.array([uid for uid, _ in queries]),
        "tokens": np.concatenate(matrices).astype(np.float16),
        "offsets": np.concatenate([[0], np.cumsum([len(m) for m in matrices])]),
        "qtokens": np.concatenate(qmatrices),
        "qoffsets": np.concatenate([[0], np.cumsum([len(m) for m in qmatrices])]),
        "fdes": muvera(matrices, "data"),
        "qfdes": muvera(qmatrices, "query"),
        "seconds": time.perf_counter() - start,
    }

    os.makedirs(os.path.dirname(cache), exist_ok=True)
    np.savez(cache, **result)
    return result


def split(tokens, offsets):
    """
    Flat tokens and offsets to a list of float32 matrices.
    """

    return [np.asarray(tokens[offsets[x] : offsets[x + 1]], dtype=np.float32) for x in range(len(offsets) - 1)]


def engine(name, url, dimensions, dim, table):
    """
    Creates a storage engine with the index defaults.
    """

    config = {"tokens": "float16", "candidates": 100, "rerank": True}
    if name == "pgvector":
        config["pgvector"] = {"url": url, "table": table}

    return storage.create(name, config, dimensions, dim)


def write(store, fdes, matrices, chunk=1024):
    """
    Writes every document in one apply, as `index` does. Returns seconds.
    """

    ids = np.arange(len(fdes), dtype=np.int64)
    batches = ((ids[x : x + chunk], fdes[x : x + chunk], matrices[x : x + chunk]) for x in range(0, len(ids), chunk))
    start = time.perf_counter()
    store.apply(np.zeros(0, dtype=np.int64), batches)
    return time.perf_counter() - start


def search(store, qfdes, qmatrices, limit=10, candidates=100):
    """
    Searches one query at a time: candidates, gather, exact MaxSim. Returns (rankings, candidate lists, milliseconds per query).
    """

    rankings, pools, times = [], [], []
    for fde, matrix in zip(qfdes, qmatrices):
        start = time.perf_counter()
        _, ids = store.search(fde[None], candidates, SearchOptions())
        ids = ids[0][ids[0] >= 0]
        scores = maxsim_flat(matrix, *store.gather(ids, decode=False))
        order = topk(scores, limit)[0]
        times.append((time.perf_counter() - start) * 1e3)
        rankings.append(ids[order])
        pools.append(ids)

    return rankings, pools, np.array(times)


def folder(path):
    """
    Bytes of the files under path.
    """

    return sum(os.path.getsize(os.path.join(root, x)) for root, _, names in os.walk(path) for x in names)


def report(result):
    """
    Prints a result and appends it to benchmarks/output/pgvector.jsonl.
    """

    line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    print(line, flush=True)
    os.makedirs(OUTPUT, exist_ok=True)
    with open(os.path.join(OUTPUT, "pgvector.jsonl"), "a", encoding="utf-8") as f:
        f.write(line + "\n")


def scifact(args):
    """
    Both engines on SciFact.
    """

    # pylint: disable=C0415
    from txtai_muvera.tools.evaluation import BEIR, Metrics

    data = encode(args.data, args.model, os.path.join(OUTPUT, "cache", "pgvector-scifact.npz"))
    qrels = BEIR.load(args.data).qrels
    matrices, qmatrices = split(data["tokens"], data["offsets"]), split(data["qtokens"], data["qoffsets"])
    fdes, qfdes = data["fdes"].astype(np.float32), data["qfdes"].astype(np.float32)
    docids = data["docids"]

    # Exact FDE top 100: what the candidates should hold
    exact = np.argsort(-(qfdes @ fdes.T), axis=1)[:, :100]

    for name in args.engines:
        store = engine(name, args.url, fdes.shape[1], matrices[0].shape[1], "bench_scifact")
        seconds = write(store, fdes, matrices)

        temp = tempfile.mkdtemp()
        try:
            store.save(temp)
            size = store.nbytes() if name == "pgvector" else folder(temp)
        finally:
            shutil.rmtree(temp)

        # Warm-up pass (page cache, prepared statements), then the timed pass
        search(store, qfdes[:20], qmatrices[:20])
        rankings, pools, times = search(store, qfdes, qmatrices)
        run = {str(qid): [str(docids[x]) for x in ranking] for qid, ranking in zip(data["qids"], rankings)}
        recall = np.mean([len(set(pool.tolist()) & set(row.tolist())) / 100 for pool, row in zip(pools, exact)])

        report(
            {
                "benchmark": "scifact",
                "engine": name,
                "config": store.config.get("pgvector") if name == "pgvector" else store.config.get("ann"),
                "documents": len(fdes),
                "write_docs_per_s": len(fdes) / seconds,
                "search_p50_ms": float(np.percentile(times, 50)),
                "search_p95_ms": float(np.percentile(times, 95)),
                "bytes_per_doc": size / len(fdes),
                "ndcg@10": float(Metrics(["ndcg@10"])(qrels, run)["ndcg@10"]),
                "fde_recall@100": float(recall),
                "encode_docs_per_s": len(fdes) / float(data["seconds"]),
            }
        )
        store.close()


class Peaks(threading.Thread):
    """
    Peak memory while a step runs, sampled every 0.1 s: this process's anonymous and file-backed resident memory, and, when
    the server runs on this machine, the sum of its processes' anonymous memory and the largest share of shared memory
    (shared_buffers) that one of them has touched.
    """

    def __init__(self, postmaster):
        super().__init__(daemon=True)
        self.postmaster, self.values = postmaster, {}
        self.reset()

    def reset(self):
        """
        Starts a new step.
        """

        self.values = {"client_anon": 0, "client_file": 0, "server_anon": 0, "server_shmem": 0}

    def run(self):
        while True:
            values = status(os.getpid())
            sample = {"client_anon": values.get("RssAnon", 0), "client_file": values.get("RssFile", 0) + values.get("RssShmem", 0)}
            sample.update(server(self.postmaster))
            for key, value in sample.items():
                self.values[key] = max(self.values[key], value)
            time.sleep(0.1)

    def peaks(self):
        """
        Returns:
            peaks of the step in MiB, server peaks None when the server is not on this machine
        """

        server = {} if self.postmaster else {"peak_server_anon_mib": None, "peak_server_shmem_mib": None}
        return {**{f"peak_{k}_mib": round(v / 1024) for k, v in self.values.items()}, **server}


def status(pid):
    """
    Resident memory of a process by kind (RssAnon, RssFile, RssShmem) in KiB, empty when it is gone.
    """

    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            return {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("RssAnon", "RssFile", "RssShmem"))}
    except OSError:
        return {}


def server(postmaster):
    """
    Server memory in KiB: the postmaster's and its children's anonymous memory summed, their largest shared memory share.
    """

    if not postmaster:
        return {}

    pids = [postmaster]
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="utf-8") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(name))
            except (OSError, IndexError, ValueError):
                continue

    values = [status(pid) for pid in pids]
    return {"server_anon": sum(x.get("RssAnon", 0) for x in values), "server_shmem": max(x.get("RssShmem", 0) for x in values)}


def database(url):
    """
    The server's settings that matter at this size, and its postmaster's pid when its data directory is readable here.

    Returns:
        (settings dict, pid or None)
    """

    # pylint: disable=C0415
    import psycopg

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    names = [
        "shared_buffers",
        "maintenance_work_mem",
        "max_parallel_maintenance_workers",
        "work_mem",
        "effective_cache_size",
        "max_wal_size",
        "checkpoint_timeout",
        "fsync",
        "max_parallel_workers_per_gather",
        "server_version",
    ]
    with psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, password=parsed.password, dbname=parsed.database) as conn:
        rows = conn.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", (names,)).fetchall()
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        folder = conn.execute("SHOW data_directory").fetchone()[0]

    settings = {name: f"{setting}{' x ' + unit if unit else ''}" for name, setting, unit in rows}
    settings["pgvector"] = version
    try:
        with open(os.path.join(folder, "postmaster.pid"), encoding="utf-8") as f:
            return settings, int(f.readline())
    except (OSError, ValueError):
        return settings, None


def scoringconfig(args, index=None):
    """
    MuveraScoring config with the compact preset: the file engine (index None) or the PostgreSQL engine with an FDE index.
    """

    config = {"method": "txtai_muvera.MuveraScoring", "path": args.checkpoint, "preset": "compact", "vectors": {"device": "cpu"}}
    if index:
        config["backend"] = "pgvector"
        config["pgvector"] = {"url": args.url, "table": f"bench_{index}_{args.documents}", "index": index}
        if index == "sketch" and args.sketch:
            config["pgvector"]["sketch"] = args.sketch
        config["pgvector"].update({k: getattr(args, k) for k in ("m", "efconstruction", "efsearch") if getattr(args, k)})

    return config


def build(config, args, synthetic):
    """
    Indexes documents "0".."N-1" through MuveraScoring.insert in batches and one index() commit, as txtai does.

    Args:
        config: scoring config
        args: arguments (documents, batch)
        synthetic: scale.Synthetic that stands in for the encoder

    Returns:
        (MuveraScoring, {insert_s: MUVERA, pooling, staging (and the ladder when it runs), commit_s: the storage engine's write})
    """

    # pylint: disable=C0415
    from txtai_muvera.glue.scoring import MuveraScoring

    scoring = MuveraScoring(config)
    scoring.encoder.encode = synthetic.encode

    start = time.perf_counter()
    for a in range(0, args.documents, args.batch):
        scoring.insert([(x, str(x), None) for x in range(a, min(a + args.batch, args.documents))], a)
    insert = time.perf_counter() - start - synthetic.seconds

    clock = time.perf_counter()
    scoring.index()
    return scoring, {"insert_s": insert, "commit_s": time.perf_counter() - clock}


def chosen(scoring):
    """
    Token settings an index's first write chose (pool, codec and its options) with its estimate: given to another index, they
    skip its ladder.
    """

    # pylint: disable=C0415
    from txtai_muvera.core import fidelity

    return json.loads(json.dumps({key: scoring.config[key] for key in (*fidelity.KEYS, "estimate") if key in scoring.config}))


def footprint(scoring):
    """
    Bytes of an index by part: the saved folder's fdes and tokens for files; heap, TOAST (with the heap's free space and
    visibility maps), HNSW index and primary key for a PostgreSQL table.
    """

    store = scoring.storage
    if scoring.config["backend"] != "pgvector":
        temp = tempfile.mkdtemp()
        try:
            scoring.save(os.path.join(temp, "scoring"))
            return scale.sizes(os.path.join(temp, "scoring"))
        finally:
            shutil.rmtree(temp)

    with store.connection() as conn:
        name, index = store.qualified(), store.qualified(f"{store.table}_fde")
        heap, total, indexes = conn.execute(
            "SELECT pg_relation_size(%s::regclass), pg_total_relation_size(%s::regclass), pg_indexes_size(%s::regclass)", (name,) * 3
        ).fetchone()
        hnsw = conn.execute("SELECT coalesce(pg_relation_size(to_regclass(%s)), 0)", (index,)).fetchone()[0]
        conn.rollback()

    return {"heap": heap, "toast": total - heap - indexes, "hnsw": hnsw, "pkey": indexes - hnsw}


def explain(scoring, query, candidates):
    """
    Plan of one candidate query as the engine sends it, with its tokens serialized as they are sent: EXPLAIN (ANALYZE, BUFFERS,
    SERIALIZE BINARY) under the engine's SET LOCAL settings.

    Returns:
        plan lines
    """

    # pylint: disable=C0415
    from pgvector import HalfVector
    from psycopg import sql

    store, fde = scoring.storage, scoring.muvera([query], "query")
    count = candidates * store.oversample
    statement = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, SERIALIZE BINARY) {}").format(store.query(count, True))
    code = store.code(fde)[0] if store.sketch else fde[0]
    with store.connection() as conn:
        conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(min(store.efsearch, 1000))))
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        conn.execute("SET LOCAL enable_seqscan = off")
        rows = conn.execute(statement, {"query": HalfVector(fde[0]), "code": HalfVector(code), "candidates": count, "limit": candidates}).fetchall()
        conn.rollback()

    # Vector literals shortened: the plan is what matters
    return [re.sub(r"'\[[^\]]*\]'", "'[...]'", row[0]) for row in rows]


def timed(scoring, query, candidates):
    """
    One search as MuveraScoring.batchsearch runs it (query encoding excluded), each part timed, then the candidates alone
    (no token rows fetched).

    Returns:
        (candidate ids, top 10 ids, {part: seconds})
    """

    fde = scoring.muvera([query], "query")
    clock = time.perf_counter()
    _, ids = scoring.storage.search(fde, candidates, SearchOptions())
    ids = ids[0][ids[0] >= 0]
    searched = time.perf_counter()
    tokens = scoring.storage.gather(ids, decode=False)
    gathered = time.perf_counter()
    top = ids[topk(maxsim_flat(query, *tokens), 10)[0]]
    ranked = time.perf_counter()

    # The FDE search alone: PostgreSQL returns no token bytes without re-ranking
    scoring.storage.search(fde, candidates, SearchOptions(rerank=False))
    alone = time.perf_counter() - ranked

    parts = {"search": searched - clock, "gather": gathered - searched, "maxsim": ranked - gathered, "total": ranked - clock, "fde_only": alone}
    return ids, top, parts


def compare(engines, queries, exact, candidates):
    """
    Searches every query on every engine, query by query (the engine that goes first turns with each query), after a warm-up
    pass over the first 10 queries.

    Returns:
        {engine: {p50/p95 per part, recall of the exact top 10 among the candidates and in the results}}
    """

    names = list(engines)
    for query in queries[:10]:
        for name in names:
            timed(engines[name], query, candidates)

    found, kept, times = {x: [] for x in names}, {x: [] for x in names}, {x: [] for x in names}
    for x, query in enumerate(queries):
        top = set(exact[x])
        for name in names[x % len(names) :] + names[: x % len(names)]:
            ids, results, parts = timed(engines[name], query, candidates)
            found[name].append(len(top & set(ids.tolist())) / len(top))
            kept[name].append(len(top & set(results.tolist())) / len(top))
            times[name].append(parts)

    summary = {}
    for name in names:
        summary[name] = {
            "recall_exact_top10_in_candidates": round(float(np.mean(found[name])), 4),
            "recall_exact_top10_in_results": round(float(np.mean(kept[name])), 4),
        }
        for part in times[name][0]:
            values = np.array([x[part] for x in times[name]]) * 1e3
            summary[name][f"{part}_p50_ms"] = round(float(np.percentile(values, 50)), 1)
            summary[name][f"{part}_p95_ms"] = round(float(np.percentile(values, 95)), 1)

    return summary


def synthetic(args):
    """
    The file engine and the PostgreSQL engine (one table per --index) on the same synthetic documents, compact preset.
    """

    settings, postmaster = database(args.url)
    peaks = Peaks(postmaster)
    peaks.start()

    generator = scale.Generator()
    rng = np.random.default_rng(1)
    queries = [generator.query(int(t), x) for x, t in enumerate(rng.integers(0, args.documents, args.queries))]

    # The file engine first: its pass also computes the exact MaxSim top 10 of the queries, and its ladder chooses the tokens
    engines, given = {}, None
    for index in [None] + args.index:
        name = f"pgvector-{index}" if index else "files"
        config = scoringconfig(args, index)
        if given:
            config.update(json.loads(json.dumps(given)))

        tracker = scale.Synthetic(generator, queries if index is None else [])
        peaks.reset()
        scoring, seconds = build(config, args, tracker)
        if index is None:
            given, exact = chosen(scoring), [x[1].tolist() for x in tracker.best]

        sizes = footprint(scoring)
        report(
            {
                "benchmark": "synthetic",
                "phase": "index",
                "engine": name,
                "documents": args.documents,
                "tokens_per_doc": round(tracker.tokens / args.documents, 1),
                "settings": given,
                "pgvector": config.get("pgvector"),
                "ann": scoring.config.get("ann"),
                "server": settings if index else None,
                **seconds,
                "write_docs_per_s": args.documents / seconds["commit_s"],
                "insert_and_write_docs_per_s": args.documents / (seconds["insert_s"] + seconds["commit_s"]),
                "bytes_per_doc": {k: round(v / args.documents, 1) for k, v in sizes.items()},
                "bytes_per_doc_total": round(sum(sizes.values()) / args.documents, 1),
                **peaks.peaks(),
                "load": os.getloadavg()[0],
            }
        )
        engines[name] = scoring

    for engine in engines.values():
        engine.encoder.encode = scale.Synthetic(None, queries).encode

    peaks.reset()
    candidates = engines["files"].config["candidates"]
    summary = compare(engines, queries, exact, candidates)
    memory = peaks.peaks()
    for name, scoring in engines.items():
        plan = explain(scoring, queries[0], candidates) if name != "files" else None
        report(
            {
                "benchmark": "synthetic",
                "phase": "search",
                "engine": name,
                "documents": args.documents,
                "queries": len(queries),
                "candidates": candidates,
                **summary[name],
                **memory,
                "load": os.getloadavg()[0],
                "plan": plan,
            }
        )

    for scoring in engines.values():
        store = scoring.storage
        if scoring.config["backend"] == "pgvector" and not args.keep:
            with store.connection() as conn:
                conn.execute(f"DROP TABLE {store.qualified()}")
                conn.commit()
        scoring.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["scifact", "synthetic"])
    parser.add_argument("--url", default=os.environ.get("TXTAI_MUVERA_PG_URL"), help="SQLAlchemy URL of a PostgreSQL with pgvector")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "..", "shared", "data", "beir", "scifact"))
    parser.add_argument("--model", default=os.path.join(OUTPUT, "standin"), help="scifact: stand-in checkpoint (txtai-muvera standin)")
    parser.add_argument("--engines", nargs="+", default=["faiss", "pgvector"], help="scifact: engines")
    parser.add_argument(
        "--checkpoint", default=scale.CHECKPOINT, help="synthetic: model loaded, its encode replaced (default the pylate-tiny fixture)"
    )
    parser.add_argument("--documents", type=int, default=20000, help="synthetic: documents")
    parser.add_argument("--index", nargs="+", default=["halfvec"], choices=["halfvec", "sketch", "flat"], help="synthetic: PostgreSQL FDE indexes")
    parser.add_argument("--sketch", type=int, default=None, help="synthetic: sketch dims of the sketch index (default the engine's)")
    parser.add_argument("--m", type=int, default=None, help="synthetic: HNSW m of the PostgreSQL indexes (default the engine's)")
    parser.add_argument("--efconstruction", type=int, default=None, help="synthetic: HNSW ef_construction (default the engine's)")
    parser.add_argument("--efsearch", type=int, default=None, help="synthetic: HNSW ef_search (default the engine's)")
    parser.add_argument("--queries", type=int, default=100, help="synthetic: queries (exact MaxSim top 10 computed while indexing)")
    parser.add_argument("--batch", type=int, default=2048, help="synthetic: documents per insert call")
    parser.add_argument("--keep", action="store_true", help="synthetic: keep the PostgreSQL tables")
    args = parser.parse_args()

    if not args.url and (args.benchmark == "synthetic" or "pgvector" in args.engines):
        parser.error("--url (or TXTAI_MUVERA_PG_URL) is required")

    scifact(args) if args.benchmark == "scifact" else synthetic(args)


if __name__ == "__main__":
    main()
