"""
Search command: runs one query or a file of queries against a saved index
"""

import json
import shutil

from . import defaults
from .arguments import common, positive
from .documents import queries as readqueries
from .errors import UsageError
from .info import load
from .progress import bar

# Queries encoded and searched at once: the progress bar advances a batch at a time (results do not depend on the batch)
BATCH = 64


def configure(subparsers):
    """
    Adds the search command.

    Args:
        subparsers: argparse sub-parsers

    Returns:
        the command's parser
    """

    parser = subparsers.add_parser("search", help="search a saved index", allow_abbrev=False)
    parser.add_argument("index", help="index folder written by `txtai-muvera index` (or any txtai-muvera index)")
    parser.add_argument("query", nargs="?", help="query text (or pass --queries)")
    parser.add_argument("--queries", metavar="FILE", help="file of queries: one per line, or JSONL rows with 'text' (and optional 'id')")
    parser.add_argument("--limit", type=positive, default=10, metavar="N", help="results per query (default 10)")

    # Search settings are the index's own, set when it was built: help states what each preset gives
    lead = "the index's setting"
    parser.add_argument(
        "--candidates", type=positive, metavar="N", help=f"FDE candidates re-ranked by exact MaxSim {defaults.text('candidates', lead=lead)}"
    )
    parser.add_argument(
        "--efsearch", type=positive, metavar="N", help=f"HNSW search depth, at least 2 x candidates {defaults.text('efsearch', lead=lead)}"
    )
    parser.add_argument("--nprobe", type=positive, metavar="N", help=f"IVF cells probed {defaults.text('nprobe', lead=lead)}")
    parser.add_argument("--no-rerank", dest="rerank", action="store_false", default=None, help="MUVERA-only: FDE scores, no MaxSim")
    parser.add_argument("--json", action="store_true", help="one JSON line per query instead of a table")
    common(parser)

    return parser


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
    results = []
    try:
        reranker = Reranker(embeddings)
        with bar(total=len(queries), desc="Searching", unit="query", quiet=args.quiet or len(queries) <= BATCH) as progress:
            for start in range(0, len(queries), BATCH):
                batch = queries[start : start + BATCH]
                rows = reranker(
                    [text for _, text in batch],
                    args.limit,
                    candidates=args.candidates,
                    efsearch=args.efsearch,
                    nprobe=args.nprobe,
                    rerank=args.rerank,
                )
                results.extend(show(batch, rows, args.json))
                progress.update(len(batch))
    finally:
        embeddings.close()

    return results


def show(queries, results, jsonl):
    """
    Prints the results of a batch of queries.

    Args:
        queries: list of (query id, query)
        results: txtai results per query
        jsonl: one JSON line per query instead of a table

    Returns:
        list of (query id, query, results)
    """

    # Indexes without content return (id, score) tuples
    results = [
        (uid, text, [row if isinstance(row, dict) else {"id": row[0], "score": row[1]} for row in rows])
        for (uid, text), rows in zip(queries, results)
    ]
    for uid, text, rows in results:
        print(json.dumps({"id": uid, "query": text, "results": rows}, default=str) if jsonl else table(text, rows))

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
