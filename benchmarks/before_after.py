"""
Before/after: indexing docs/s and single-query search latency on the first SciFact documents with the stand-in model.

    python benchmarks/before_after.py 1000 100 [exact|compact|small]
    PYTHONPATH=/path/to/a/0.1.0/checkout python benchmarks/before_after.py 1000 100     # the same for 0.1.0

Prints one JSON line. Run the versions alternately in separate processes on a quiet machine and compare the lines.
"""

import json
import os
import sys
import time

import numpy as np

import txtai_muvera

from txtai import Embeddings

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "beir", "scifact")
MODEL = os.path.join(HERE, "output", "standin")


def main():
    documents, count = int(sys.argv[1]), int(sys.argv[2])
    preset = sys.argv[3] if len(sys.argv) > 3 else None

    with open(os.path.join(DATA, "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line) for line in f][:documents]
    with open(os.path.join(DATA, "queries.jsonl"), encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in f][:count]

    rows = [(row["_id"], f"{row['title']} {row['text']}".strip(), None) for row in corpus]
    embeddings = Embeddings(sparse={"path": MODEL, "vectors": {"threads": 2}, **({"preset": preset} if preset else {})}, content=True)

    start = time.perf_counter()
    embeddings.index(rows)
    elapsed = time.perf_counter() - start

    embeddings.search(queries[0], 10)
    times = []
    for query in queries:
        start = time.perf_counter()
        embeddings.search(query, 10)
        times.append(time.perf_counter() - start)

    print(
        json.dumps(
            {
                "code": txtai_muvera.__file__,
                "preset": preset,
                "documents": documents,
                "docs_per_s": round(documents / elapsed, 2),
                "search_p50_ms": round(1000 * np.percentile(times, 50), 2),
                "search_p95_ms": round(1000 * np.percentile(times, 95), 2),
                "load": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
