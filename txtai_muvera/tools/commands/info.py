"""
Info command: what an index holds and how it was built, read from its saved files without loading the model
"""

import json
import os

from ...core import files
from .errors import UsageError


def configure(subparsers):
    """
    Adds the info command.

    Args:
        subparsers: argparse sub-parsers
    """

    parser = subparsers.add_parser("info", help="show what an index holds and how it was built")
    parser.add_argument("index", help="index folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args):
    """
    Runs the info command.

    Args:
        args: parsed arguments

    Returns:
        info dict
    """

    # Under the index's shared lock, after repairing an interrupted save: never a mix of two saves. In a read-only folder that
    # a dead save left moved aside, reading returns the previous save's folder
    with files.reading(args.index) as path:
        info = describe(path)

    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(key) for key in info)
        for key, value in info.items():
            value = json.dumps(value) if isinstance(value, (dict, list)) else value
            print(f"{key:<{width}}  {value}")

    return info


def describe(path):
    """
    Describes a saved index.

    Args:
        path: index folder

    Returns:
        dict
    """

    config = readconfig(path)
    scoring = config.get("scoring") or {}
    if scoring.get("method") != "txtai_muvera.MuveraScoring" and scoring.get("backend") != "txtai_muvera.MuveraIndex":
        raise UsageError(f"{path} is a txtai index but not a txtai-muvera one (scoring method: {scoring.get('method')})")

    header = readjson(os.path.join(path, "scoring", "header.json"))
    tokens = readjson(os.path.join(path, "scoring", "tokens", "header.json"))
    muvera, ann, vectors = scoring.get("muvera", {}), scoring.get("ann", {}), scoring.get("vectors", {})
    dense = config.get("path")

    return {
        "index": os.path.abspath(path),
        "documents": header.get("documents"),
        "tokens": tokens.get("tokens"),
        "model": scoring.get("path"),
        "fingerprint": scoring.get("fingerprint"),
        "token dim": tokens.get("dim"),
        "token dtype": tokens.get("dtype", scoring.get("tokens")),
        "query length": vectors.get("query_length"),
        "document length": vectors.get("document_length"),
        "fde dims": scoring.get("dimensions"),
        "muvera": muvera,
        "ann": {key: value for key, value in ann.items() if key in ("index", "type", "quantize", "hnsw", "ivf", "pq")},
        "rerank": scoring.get("rerank"),
        "candidates": scoring.get("candidates"),
        "dense model": dense,
        "content": bool(config.get("content")),
        "txtai": (scoring.get("build") or {}).get("txtai"),
        "created": (scoring.get("build") or {}).get("create"),
        "bytes on disk": size(path),
        "bytes by part": parts(path),
    }


def size(path):
    """
    Bytes of the files under path (or of the file).

    Args:
        path: file or folder

    Returns:
        int
    """

    if os.path.isfile(path):
        return os.path.getsize(path)

    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def parts(path):
    """
    Bytes on disk per saved part: each entry of the index folder, the scoring folder's entries one by one (FDE index, token
    store), so that what dominates an index's size shows at a glance.

    Args:
        path: index folder

    Returns:
        {part: bytes}, largest first
    """

    sizes = {}
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if entry == "scoring" and os.path.isdir(full):
            for part in sorted(os.listdir(full)):
                sizes[f"scoring/{part}"] = size(os.path.join(full, part))
        else:
            sizes[entry] = size(full)

    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def readconfig(path):
    """
    Reads the config.json of a saved txtai index.

    Args:
        path: index folder

    Returns:
        dict
    """

    if not os.path.exists(path):
        raise UsageError(f"Index not found: {path}")
    if not os.path.isdir(path):
        raise UsageError(f"Index {path} is not a folder (archives: extract them first, or load them with txtai's Embeddings.load)")

    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise UsageError(f"No txtai index at {path}: {file} is missing")

    return readjson(file)


def readjson(file):
    """
    Reads a JSON file of a saved index.

    Args:
        file: JSON file

    Returns:
        dict
    """

    try:
        return files.readjson(file, "index file")
    except (OSError, ValueError) as error:
        raise UsageError(f"Incomplete or corrupt index: {error}") from error


def load(path):
    """
    Loads a saved txtai-muvera index, checking its files first so a wrong path gives a one-line error. A save interrupted
    between its renames is repaired first, and the check and the load hold the index's shared lock (see `durable.load`).

    Args:
        path: index folder

    Returns:
        Embeddings
    """

    # pylint: disable=C0415
    from txtai import Embeddings

    import txtai_muvera  # noqa: F401, pylint: disable=W0611

    with files.reading(path) as folder:
        describe(folder)
        embeddings = Embeddings()
        embeddings.load(folder)

    return embeddings
