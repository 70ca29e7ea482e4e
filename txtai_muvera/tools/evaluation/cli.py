"""
Evaluation command line: `txtai-muvera evaluate FOLDER [FOLDER ...]`
"""

import argparse
import os
import sys

from .run import MODES, evaluate

# Default checkpoint evaluated
MODEL = "neuml/colbert-muvera-micro"


def configure(subparsers):
    """
    Adds the `evaluate` subcommand.

    Args:
        subparsers: argparse subparsers action

    Returns:
        the subcommand's parser
    """

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint on BEIR-layout folders (full MaxSim, MUVERA + rerank, MUVERA only)",
        description="Indexes each BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) through txtai and reports "
        "accuracy, precision and recall @1/3/5/10, nDCG@10, MRR@10, MAP@100 and Recall@100 per mode, with a mean over folders.",
    )
    parser.add_argument("folders", nargs="+", help="BEIR-layout folders")
    parser.add_argument("--model", default=MODEL, help=f"late-interaction checkpoint, folder or hub id (default {MODEL})")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma separated modes from {','.join(MODES)} (default all)")
    parser.add_argument("--candidates", type=int, default=100, help="FDE candidates re-ranked per query in rerank mode (default 100)")
    parser.add_argument("--muvera-repetitions", type=int, default=20, help="MUVERA repetitions (default 20)")
    parser.add_argument("--muvera-hashes", type=int, default=5, help="MUVERA SimHash bits, 2^hashes partitions (default 5)")
    parser.add_argument("--muvera-projection", type=int, default=16, help="MUVERA projection dims per partition, 0 keeps the token dims (default 16)")
    parser.add_argument("--muvera-seed", type=int, default=42, help="MUVERA seed (default 42)")
    parser.add_argument("--muvera-fill", action="store_true", help="fill empty document partitions")
    parser.add_argument("--muvera-final", type=int, default=None, help="final projection dims (default none)")
    parser.add_argument("--index", default="flat", choices=["auto", "flat", "hnsw", "ivf"], help="FDE index type (default flat: exact FDE search)")
    parser.add_argument("--quantize", default=None, choices=["sq8", "pq"], help="FDE compression (default none)")
    parser.add_argument("--tokens", default="float16", choices=["float16", "float32", "int8", "residual", "pq"], help="token storage (default float16)")
    parser.add_argument("--preset", default="exact", choices=["exact", "compact", "small"], help="defaults for what no flag sets, e.g. pooling (default exact)")
    parser.add_argument("--batch", type=int, default=None, help="model batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--half", action="store_true", help="16-bit encoding: bfloat16 on CPU, float16 on GPU")
    parser.add_argument("--split", default="test", help="qrels split (default test)")
    parser.add_argument("--max-queries", type=int, default=None, help="judged queries kept per folder (quick runs)")
    parser.add_argument("--max-docs", type=int, default=None, help="documents kept per folder, judged ones first (quick runs)")
    parser.add_argument("--cache", default=None, help="folder caching built indexes between runs")
    parser.add_argument("--layout", default="card", choices=["card", "rows"], help="table layout (default card: metrics as rows)")
    parser.add_argument("--output", default=None, help="JSON lines output file (appended)")

    # Aliases named in the issue
    parser.add_argument("--repetitions", dest="muvera_repetitions", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--hashes", dest="muvera_hashes", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--projection", dest="muvera_projection", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--fill", dest="muvera_fill", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--final", dest="muvera_final", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    return parser


def run(args):
    """
    Runs the `evaluate` subcommand: prints the tables to stdout and appends JSON lines to --output.

    Args:
        args: parsed arguments from the parser configure() added

    Returns:
        exit status
    """

    modes = [x.strip() for x in args.modes.split(",") if x.strip()]
    unknown = [x for x in modes if x not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown or no mode(s) {unknown or modes} in --modes, accepted: {','.join(MODES)}")

    muvera = {
        "repetitions": args.muvera_repetitions,
        "hashes": args.muvera_hashes,
        "projection": args.muvera_projection or None,
        "seed": args.muvera_seed,
        "fill": bool(args.muvera_fill),
        "final": args.muvera_final,
    }
    vectors = {key: value for key, value in {"batch": args.batch, "threads": args.threads, "half": args.half or None}.items() if value is not None}
    ann = {"index": args.index, **({"quantize": args.quantize} if args.quantize else {})}

    report = evaluate(
        args.folders,
        args.model,
        modes=modes,
        split=args.split,
        maxqueries=args.max_queries,
        maxdocs=args.max_docs,
        muvera=muvera,
        candidates=args.candidates,
        tokens=args.tokens,
        preset=args.preset,
        ann=ann,
        vectors=vectors,
        cache=args.cache,
    )

    sys.stdout.write(report.table(args.layout) + "\n")
    sys.stdout.write(report.jsonl())
    if args.output:
        folder = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(folder, exist_ok=True)
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(report.jsonl())

    return 0
