"""
Index command: builds a saved txtai index from JSONL, CSV or a folder of text files
"""

import contextlib
import logging
import os
import time

from ...core import files
from . import arguments
from .documents import Documents
from .errors import UsageError
from .progress import bar, stage

logger = logging.getLogger(__name__)

# Default model: a hub id or any local late-interaction checkpoint folder
MODEL = "neuml/colbert-muvera-micro"

# Documents txtai reads and hands to the model at a time (txtai's default is 1,024): the encoding progress bar moves by this step
BATCH = 128

DESCRIPTION = (
    "Indexes documents with a late-interaction model into a txtai index searched by MUVERA and re-ranked by exact MaxSim. "
    "Options not given take the preset's value; `txtai-muvera info` shows what an index was built with."
)


def configure(subparsers):
    """
    Adds the index command.

    Args:
        subparsers: argparse sub-parsers

    Returns:
        the command's parser
    """

    parser = subparsers.add_parser(
        "index", help="index JSONL, CSV or a folder of text files into a saved txtai index", description=DESCRIPTION, allow_abbrev=False
    )
    parser.add_argument("input", help="JSONL (.jsonl), CSV/TSV with a 'text' column, or a folder of .txt/.md files")
    parser.add_argument("output", help="folder to save the index to")
    parser.add_argument("--format", choices=["jsonl", "csv", "folder"], help="input format (default from the path)")
    parser.add_argument("--model", default=MODEL, help=f"late-interaction checkpoint, hub id or local folder (default {MODEL})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index at output")

    groups = arguments.index(parser)
    groups["store"].add_argument("--no-rerank", dest="rerank", action="store_false", default=None, help="search MUVERA-only by default (no MaxSim)")
    arguments.common(parser)

    return parser


def run(args):
    """
    Runs the index command.

    Args:
        args: parsed arguments

    Returns:
        summary dict: documents, tokens, bytes, seconds, output
    """

    # pylint: disable=C0415
    from txtai import Embeddings

    import txtai_muvera  # noqa: F401, pylint: disable=W0611
    from ...glue import durable
    from ...core import fidelity
    from ...core.models import Checkpoint

    documents = Documents(args.input, args.format)

    # A save interrupted between its renames is put back before the output is checked: it is the index there
    with files.reading(args.output):
        output = prepare(args.output, args.overwrite)

    # Validate every row before the model is loaded, so a bad row fails in seconds and names its line
    start = time.perf_counter()
    total = documents.check(lambda rows: bar(rows, desc="Checking", quiet=args.quiet))

    # Locate the checkpoint before the progress bars start: a wrong path or an offline hub id fails here
    Checkpoint(args.model)
    logger.info("Indexing %d documents from %s with %s", total, args.input, args.model)

    embeddings = Embeddings(sparse={"path": args.model, **arguments.settings(args), **rerank(args)}, content=True, batch=BATCH)
    with contextlib.ExitStack() as steps:
        embeddings.index(stream(documents, total, steps, args.quiet))

    # Save next to the output and swap it in: a failed run leaves an existing index as it was
    with stage("Saving", args.quiet):
        durable.save(embeddings, output)

    index = embeddings.scoring
    estimate, target = embeddings.config["scoring"].get("estimate"), embeddings.config["scoring"].get("fidelity")
    summary = {
        "output": output,
        "documents": embeddings.count(),
        "tokens": index.store.tokens,
        "dimensions": embeddings.config["scoring"]["dimensions"],
        "bytes": size(output),
        "seconds": round(time.perf_counter() - start, 3),
        "fidelity": estimate,
    }
    embeddings.close()

    print(
        f"Indexed {summary['documents']:,} documents ({summary['tokens']:,} tokens, {summary['dimensions']:,}-dim FDEs) into {output}: "
        f"{human(summary['bytes'])} on disk in {summary['seconds']:.1f} s"
    )
    if estimate:
        print(fidelity.describe(estimate, target if estimate.get("ladder") else None))
    return summary


def stream(documents, total, steps, quiet):
    """
    Yields documents to txtai behind an encoding progress bar. txtai reads BATCH documents, encodes them, then reads the next
    ones: the bar counts a batch when the first document of the next one is read. After the last document, the last batch is
    encoded and the index committed (token codec training, FDE index build), shown as one step until `steps` closes.

    Args:
        documents: Documents
        total: number of documents
        steps: ExitStack that holds the bars until the index call returns
        quiet: no progress bars

    Returns:
        documents
    """

    progress = steps.enter_context(bar(total=total, desc="Encoding", quiet=quiet))
    for count, document in enumerate(documents):
        if count and not count % BATCH:
            progress.update(BATCH)
        yield document

    progress.close()
    steps.enter_context(stage("Encoding the last batch, building the index", quiet))


def rerank(args):
    """
    Search default of the new index: MUVERA-only when --no-rerank is given.

    Args:
        args: parsed arguments

    Returns:
        dict
    """

    return {"rerank": args.rerank} if args.rerank is not None else {}


def prepare(output, overwrite):
    """
    Checks the output folder: an existing index is only replaced with overwrite, anything else there is never touched.

    Args:
        output: output folder
        overwrite: replace an existing index

    Returns:
        absolute output path
    """

    output = os.path.abspath(output)
    if os.path.isfile(output):
        raise UsageError(f"Output {output} is a file, expected a folder for the index")

    if os.path.isdir(output) and os.listdir(output):
        if not os.path.isfile(os.path.join(output, "config.json")):
            raise UsageError(f"Output folder {output} is not empty and holds no txtai index: choose another folder")
        if not overwrite:
            raise UsageError(f"An index already exists at {output}: pass --overwrite to replace it")

    return output


def human(count):
    """
    Formats a byte count for people: 1 decimal and a unit (B, kB, MB, GB, TB; powers of 1,000).

    Args:
        count: bytes

    Returns:
        str
    """

    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:,} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000

    return f"{count:.1f} TB"


def size(path):
    """
    Bytes on disk under path.

    Args:
        path: folder

    Returns:
        int
    """

    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
