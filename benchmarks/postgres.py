"""
PostgreSQL storage engine against the file engine, same inputs and settings, one run.

1. `scifact`: the stand-in checkpoint encodes SciFact once (cached); both engines store the same FDEs and token matrices
   (float16 tokens, 100 candidates re-ranked by exact MaxSim) and answer the same query FDEs. Per engine: storage writes in
   documents/s, search p50/p95 (candidates + gather + MaxSim, query encoding excluded: it is the same for both), bytes per
   document, nDCG@10 and the recall of the exact FDE top 100 among the candidates.
2. `synthetic`: PostgreSQL alone on N synthetic documents (random 128-dim unit tokens, 100 per document, default MUVERA
   20/5/16 FDEs): bytes per document by part, documents/s, search p50/p95 at 100 candidates. For docs/scale-out.md.

Usage (a running PostgreSQL with pgvector; `.ci/postgres start` prints a URL):
    python benchmarks/postgres.py scifact --url postgresql+psycopg2://postgres@127.0.0.1:54329/muvera
    python benchmarks/postgres.py synthetic --url ... --documents 10000

Prints one JSON line per result and appends it to benchmarks/output/pgvector.jsonl.
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from txtai_muvera.core import storage
from txtai_muvera.core.maxsim import maxsim_flat, topk
from txtai_muvera.core.muvera import Muvera
from txtai_muvera.core.options import SearchOptions

ROOT = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(ROOT, "output")


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


def synthetic(args):
    """
    PostgreSQL alone on synthetic documents: costs per document for docs/scale-out.md.
    """

    rng, muvera, dim, tokens = np.random.default_rng(0), Muvera(), 128, args.tokens
    store = engine("pgvector", args.url, muvera.dimensions(dim), dim, f"bench_synthetic_{args.documents}")

    # Inputs are generated while the write reads them: their time is measured and taken out of the write's
    generating = [0.0]

    def documents(start, count):
        for x in range(start, start + count, 1000):
            begin, n = time.perf_counter(), min(1000, start + count - x)
            matrices = rng.standard_normal((n, tokens, dim)).astype(np.float32)
            matrices /= np.linalg.norm(matrices, axis=2, keepdims=True)
            batch = np.arange(x, x + n, dtype=np.int64), muvera(list(matrices), "data"), list(matrices)
            generating[0] += time.perf_counter() - begin
            yield batch

    start = time.perf_counter()
    store.apply(np.zeros(0, dtype=np.int64), documents(0, args.documents))
    seconds = time.perf_counter() - start - generating[0]

    queries = rng.standard_normal((50, 32, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=2, keepdims=True)
    qfdes = muvera(list(queries), "query")
    search(store, qfdes[:10], list(queries[:10]))
    _, _, times = search(store, qfdes, list(queries))

    # Upserts into the built table: the HNSW index grows one document at a time
    generating[0] = 0.0
    start = time.perf_counter()
    store.apply(np.zeros(0, dtype=np.int64), documents(args.documents, 1000))
    upsert = time.perf_counter() - start - generating[0]

    with store.connection() as conn:
        name = store.qualified()
        sizes = conn.execute(
            "SELECT pg_relation_size(%s::regclass), pg_total_relation_size(%s::regclass) - pg_relation_size(%s::regclass) - pg_indexes_size(%s::regclass), "
            "pg_indexes_size(%s::regclass)",
            (name,) * 5,
        ).fetchone()
        conn.rollback()

    count = args.documents + 1000
    report(
        {
            "benchmark": "synthetic",
            "documents": args.documents,
            "tokens_per_doc": tokens,
            "dim": dim,
            "fde_dims": muvera.dimensions(dim),
            "config": store.config["pgvector"],
            "index_docs_per_s": args.documents / seconds,
            "upsert_docs_per_s": 1000 / upsert,
            "search_p50_ms": float(np.percentile(times, 50)),
            "search_p95_ms": float(np.percentile(times, 95)),
            "heap_bytes_per_doc": sizes[0] / count,
            "toast_bytes_per_doc": sizes[1] / count,
            "index_bytes_per_doc": sizes[2] / count,
            "total_bytes_per_doc": sum(sizes) / count,
        }
    )

    if not args.keep:
        with store.connection() as conn:
            conn.execute(f"DROP TABLE {store.qualified()}")
            conn.commit()
    store.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["scifact", "synthetic"])
    parser.add_argument("--url", default=os.environ.get("TXTAI_MUVERA_PG_URL"), help="SQLAlchemy URL of a PostgreSQL with pgvector")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "..", "shared", "data", "beir", "scifact"))
    parser.add_argument("--model", default=os.path.join(OUTPUT, "standin"), help="stand-in checkpoint (txtai-muvera standin)")
    parser.add_argument("--engines", nargs="+", default=["faiss", "pgvector"])
    parser.add_argument("--documents", type=int, default=10000)
    parser.add_argument("--tokens", type=int, default=100, help="tokens per synthetic document")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic table")
    args = parser.parse_args()

    if not args.url and (args.benchmark == "synthetic" or "pgvector" in args.engines):
        parser.error("--url (or TXTAI_MUVERA_PG_URL) is required")

    scifact(args) if args.benchmark == "scifact" else synthetic(args)


if __name__ == "__main__":
    main()
