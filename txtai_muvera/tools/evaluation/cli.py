"""
Evaluation command line: `txtai-muvera evaluate FOLDER [FOLDER ...]`
"""

import os
import sys

from ..commands import arguments
from ..commands import evaluate as command
from ..commands.defaults import preset
from ..commands.progress import bar, ticking
from .report import Report
from .run import MODES, evaluate


def configure(subparsers):
    """
    Adds the `evaluate` subcommand.

    Args:
        subparsers: argparse subparsers action

    Returns:
        the subcommand's parser
    """

    return command.configure(subparsers)


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

    # Options given, then the settings evaluate fixes; Run takes the token codec and candidates as values: the preset's
    config = arguments.settings(args, "muvera_")
    name = config.get("preset", command.PRESET)
    settings = preset(name)
    ann = {"index": command.FIXED["ann"], **config.get("ann", {})}

    report = Counted(total=len(args.folders) * len(modes), quiet=getattr(args, "quiet", False))
    with report.progress, ticking(report.progress):
        for folder in args.folders:
            report.progress.set_postfix_str(os.path.basename(os.path.normpath(folder)))
            evaluate(
                [folder],
                args.model,
                modes=modes,
                split=args.split,
                maxqueries=args.max_queries,
                maxdocs=args.max_docs,
                report=report,
                muvera=config.get("muvera", {}),
                candidates=config.get("candidates", settings["candidates"]),
                tokens=config.get("tokens", settings["tokens"]),
                preset=name,
                ann=ann,
                vectors=config.get("vectors", {}),
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


class Counted(Report):
    """
    Report that advances a progress bar with each result row: one per folder and mode.
    """

    def __init__(self, total, quiet=False):
        """
        Creates a report with a progress bar.

        Args:
            total: expected rows
            quiet: no progress bar
        """

        super().__init__()
        self.progress = bar(total=total, desc="Evaluating", unit="run", quiet=quiet)

    def add(self, dataset, mode, scores, **extra):
        super().add(dataset, mode, scores, **extra)
        self.progress.update()
