"""
Evaluate command: indexes BEIR-layout folders and reports retrieval metrics per search mode. The options are defined here,
without importing the evaluation package (txtai, torch, ranx), which runs only when the command does.
"""

import importlib

from . import arguments, defaults

# Default checkpoint evaluated
MODEL = "neuml/colbert-muvera-micro"

# Preset of evaluated indexes: 0.1.0's settings, the quality tables of docs/benchmarks.md
PRESET = "exact"

# Settings evaluate uses whatever the preset, when not given: exact FDE search, so MUVERA's own quality is what is measured
FIXED = {"ann": "flat"}

# Search modes, read from the evaluation package without importing it
MODES = defaults.constant("txtai_muvera.tools.evaluation.run", "MODES")


def configure(subparsers):
    """
    Adds the evaluate command.

    Args:
        subparsers: argparse sub-parsers

    Returns:
        the command's parser
    """

    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint on BEIR-layout folders (full MaxSim, MUVERA + rerank, MUVERA only)",
        description="Indexes each BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) through txtai and reports "
        "accuracy, precision and recall @1/3/5/10, nDCG@10, MRR@10, MAP@100 and Recall@100 per mode, with a mean over folders. "
        "Index options take the same names as in `txtai-muvera index`.",
        allow_abbrev=False,
    )
    parser.add_argument("folders", nargs="+", help="BEIR-layout folders")
    parser.add_argument("--model", default=MODEL, help=f"late-interaction checkpoint, folder or hub id (default {MODEL})")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma separated modes from {','.join(MODES)} (default all)")

    # The options of `index`, with the preset and FDE index evaluation defaults to; token pooling is the preset's. MUVERA
    # options keep the names earlier versions gave them in the parsed arguments (muvera_repetitions, ...)
    arguments.index(parser, chosen=PRESET, fixed=FIXED, skip=("pool",), hidden=True, prefix="muvera_")

    runs = parser.add_argument_group("runs and output")
    runs.add_argument("--split", default="test", help="qrels split (default test)")
    runs.add_argument("--max-queries", type=arguments.positive, help="judged queries kept per folder, for quick runs (default all)")
    runs.add_argument("--max-docs", type=arguments.positive, help="documents kept per folder, judged ones first, for quick runs (default all)")
    runs.add_argument("--cache", help="folder caching built indexes between runs (default none)")
    runs.add_argument("--layout", default="card", choices=["card", "rows"], help="table layout (default card: metrics as rows)")
    runs.add_argument("--output", help="JSON lines output file, appended to (default none)")
    arguments.common(parser)

    return parser


def run(args):
    """
    Runs the evaluate command.

    Args:
        args: parsed arguments

    Returns:
        exit status
    """

    return importlib.import_module("txtai_muvera.tools.evaluation.cli").run(args)
