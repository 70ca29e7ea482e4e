"""
Index command: builds a saved txtai index from JSONL, CSV or a folder of text files
"""

import argparse
import os
import time

from ...core import files
from .documents import Documents
from .errors import UsageError

# Default model: a hub id or any local late-interaction checkpoint folder
MODEL = "neuml/colbert-muvera-micro"


def configure(subparsers):
    """
    Adds the index command.

    Args:
        subparsers: argparse sub-parsers
    """

    parser = subparsers.add_parser("index", help="index JSONL, CSV or a folder of text files into a saved txtai index")
    parser.add_argument("input", help="JSONL (.jsonl), CSV/TSV with a 'text' column, or a folder of .txt/.md files")
    parser.add_argument("output", help="folder to save the index to")
    parser.add_argument("--format", choices=["jsonl", "csv", "folder"], help="input format (default: from the path)")
    parser.add_argument("--model", default=MODEL, help=f"late-interaction checkpoint, hub id or local folder (default: {MODEL})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing index at output")

    muvera = parser.add_argument_group("MUVERA (FDE dims = repetitions x 2^hashes x projection)")
    muvera.add_argument("--repetitions", type=positive, help="independent partitionings (default 20)")
    muvera.add_argument("--hashes", type=positive, help="SimHash bits per repetition: 2^hashes buckets (default 5)")
    muvera.add_argument("--projection", type=positive, help="dims each bucket is projected to (default 16)")
    muvera.add_argument("--final", type=positive, help="final random projection of the FDE to this many dims (default: none)")
    muvera.add_argument("--fill", action="store_true", help="fill empty document buckets from the nearest token")
    muvera.add_argument("--seed", type=int, help="random seed (default 42)")

    store = parser.add_argument_group("storage and search defaults")
    store.add_argument("--preset", choices=["compact", "small", "exact"], help="named defaults (default compact; exact = 0.1.0's settings)")
    store.add_argument("--tokens", choices=["float16", "float32", "int8", "residual", "pq"], help="token codec (default: the preset's)")
    store.add_argument("--ann", choices=["auto", "flat", "hnsw", "ivf"], help="FDE index type (default auto: flat up to 5,000 documents)")
    store.add_argument("--quantize", choices=["sq8", "pq"], help="compress stored FDEs (default: none)")
    store.add_argument("--candidates", type=positive, help="FDE candidates re-ranked per query (default: the preset's, compact 1000)")
    store.add_argument("--no-rerank", dest="rerank", action="store_false", default=None, help="MUVERA-only search by default")

    model = parser.add_argument_group("encoding")
    model.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    model.add_argument("--batch", type=positive, help="model batch size (default 32)")
    model.add_argument("--half", action="store_true", default=None, help="16-bit encoding: bfloat16 on CPU (fast with AVX512-BF16 or AMX), float16 on GPU")
    model.add_argument("--threads", type=positive, help="CPU threads for the model (default: torch's, one per core); 1 is fastest on a busy machine")
    model.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    """
    Runs the index command.

    Args:
        args: parsed arguments

    Returns:
        summary dict: documents, tokens, bytes, seconds, output
    """

    # pylint: disable=C0415
    from tqdm import tqdm
    from txtai import Embeddings

    import txtai_muvera  # noqa: F401, pylint: disable=W0611
    from ...glue import durable
    from ...core.models import Checkpoint

    documents = Documents(args.input, args.format)

    # A save interrupted between its renames is put back before the output is checked: it is the index there
    with files.reading(args.output):
        output = prepare(args.output, args.overwrite)

    # Validate every row before the model is loaded, so a bad row fails in seconds and names its line
    start = time.perf_counter()
    total = documents.check()

    # Locate the checkpoint before the progress bar starts: a wrong path or an offline hub id fails here
    Checkpoint(args.model)

    embeddings = Embeddings(sparse=config(args), content=True)
    with tqdm(documents, total=total, unit="doc", desc="Indexing", disable=args.quiet) as progress:
        embeddings.index(progress)

    # Save next to the output and swap it in: a failed run leaves an existing index as it was
    durable.save(embeddings, output)
    index = embeddings.scoring
    summary = {
        "output": output,
        "documents": embeddings.count(),
        "tokens": index.store.tokens,
        "dimensions": embeddings.config["scoring"]["dimensions"],
        "bytes": size(output),
        "seconds": round(time.perf_counter() - start, 3),
    }
    embeddings.close()

    print(
        f"Indexed {summary['documents']:,} documents ({summary['tokens']:,} tokens, {summary['dimensions']:,}-dim FDEs) into {output}: "
        f"{summary['bytes']:,} bytes on disk in {summary['seconds']:.1f} s"
    )
    return summary


def config(args):
    """
    Builds the sparse scoring config from the arguments. Only options given on the command line are set, the package
    defaults (written back into config.json at index time) cover the rest.

    Args:
        args: parsed arguments

    Returns:
        dict
    """

    sparse = {"path": args.model}
    sections = {
        "muvera": {name: getattr(args, name) for name in ("repetitions", "hashes", "projection", "final", "seed")},
        "vectors": {"device": args.device, "batch": args.batch, "threads": args.threads, "half": args.half},
        "ann": {"index": args.ann, "quantize": args.quantize},
    }
    for section, values in sections.items():
        values = {key: value for key, value in values.items() if value is not None}
        if values:
            sparse[section] = values

    if args.fill:
        sparse.setdefault("muvera", {})["fill"] = True

    for key in ("preset", "tokens", "candidates", "rerank"):
        if getattr(args, key) is not None:
            sparse[key] = getattr(args, key)

    return sparse


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


def size(path):
    """
    Bytes on disk under path.

    Args:
        path: folder

    Returns:
        int
    """

    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def positive(value):
    """
    Argparse type: a positive integer.

    Args:
        value: argument text

    Returns:
        int
    """

    try:
        number = int(value)
    except ValueError:
        number = 0

    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")

    return number
