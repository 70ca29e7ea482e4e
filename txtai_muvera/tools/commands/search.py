"""
Search command: runs one query or a file of queries against a saved index
"""

import json
import shutil

from .documents import queries as readqueries
from .errors import UsageError
from .index import positive
from .info import load


def configure(subparsers):
    """
    Adds the search command.

    Args:
        subparsers: argparse sub-parsers
    """

    parser = subparsers.add_parser("search", help="search a saved index")
    parser.add_argument("index", help="index folder written by `txtai-muvera index` (or any txtai-muvera index)")
    parser.add_argument("query", nargs="?", help="query text (or pass --queries)")
    parser.add_argument("--queries", help="file of queries: one per line, or JSONL rows with 'text' (and optional 'id')")
    parser.add_argument("--limit", type=positive, default=10, help="results per query (default 10)")
    parser.add_argument("--candidates", type=positive, help="FDE candidates re-ranked by exact MaxSim (default: the index setting, 100)")
    parser.add_argument("--efsearch", type=positive, help="HNSW search depth for this search (default: the index setting, 128)")
    parser.add_argument("--nprobe", type=positive, help="IVF cells probed for this search (default: the index setting, 64)")
    parser.add_argument("--no-rerank", dest="rerank", action="store_false", default=None, help="MUVERA-only: FDE scores, no MaxSim")
    parser.add_argument("--json", action="store_true", help="one JSON line per query instead of a table")


def run(args):
    """
    Runs the search command.

    Args:
        args: parsed arguments

    Returns:
        list of (query id, query, results)
    """

    # pylint: disable=C0415
    from ...glue.pipeline import Reranker

    if (args.query is None) == (args.queries is None):
        raise UsageError("search needs one query or --queries FILE (not both)")

    queries = readqueries(args.queries) if args.queries else [(0, args.query)]
    if not any(text.strip() for _, text in queries):
        raise UsageError("Empty query")

    embeddings = load(args.index)
    try:
        results = Reranker(embeddings)(
            [text for _, text in queries], args.limit, candidates=args.candidates, efsearch=args.efsearch, nprobe=args.nprobe, rerank=args.rerank
        )
    finally:
        embeddings.close()

    # Indexes without content return (id, score) tuples
    results = [
        (uid, text, [row if isinstance(row, dict) else {"id": row[0], "score": row[1]} for row in rows])
        for (uid, text), rows in zip(queries, results)
    ]
    for uid, text, rows in results:
        print(json.dumps({"id": uid, "query": text, "results": rows}, default=str) if args.json else table(text, rows))

    return results


def table(query, rows):
    """
    Formats the results of one query as a text table.

    Args:
        query: query text
        rows: txtai results

    Returns:
        str
    """

    width = max(shutil.get_terminal_size((120, 20)).columns, 60)
    ids = [str(row["id"]) for row in rows]
    size = max([len(x) for x in ids] + [2])

    lines = [f"query: {query}", f"{'#':>3}  {'score':>8}  {'id':<{size}}  text"]
    for rank, (uid, row) in enumerate(zip(ids, rows), start=1):
        text = " ".join(str(row.get("text", "")).split())
        room = max(width - size - 19, 20)
        text = text if len(text) <= room else text[: room - 1] + "…"
        lines.append(f"{rank:>3}  {row['score']:8.4f}  {uid:<{size}}  {text}")

    if not rows:
        lines.append("  (no results)")

    return "\n".join(lines) + "\n"
