"""
Info command: what an index holds and how it was built, read from its saved files without loading the model
"""

import importlib.metadata
import json
import os

from ...core import files
from .arguments import common
from .errors import UsageError
from .index import human

# Saved index format versions whose writer recorded no preset, pooling or build metadata (txtai-muvera 0.1.0)
LEGACY = 1


def configure(subparsers):
    """
    Adds the info command.

    Args:
        subparsers: argparse sub-parsers

    Returns:
        the command's parser
    """

    parser = subparsers.add_parser("info", help="show what an index holds and how it was built", allow_abbrev=False)
    parser.add_argument("index", help="index folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text (sizes in bytes)")
    common(parser)

    return parser


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
        print(text(info))

    return info


def text(info):
    """
    Formats a description for people: one line per entry, sizes in kB / MB / GB, settings in words.

    Args:
        info: describe() dict

    Returns:
        str
    """

    codec, fde = info["codec"], info["fde index"]
    lines = {
        "index": info["index"],
        "documents": f"{info['documents']:,}",
        "tokens": f"{info['tokens']:,}" if isinstance(info["tokens"], int) else info["tokens"],
        "model": info["model"],
        "fingerprint": info["fingerprint"],
        "preset": info["preset"],
        "codec": ", ".join([codec["name"], *(f"{codec[key]} {key}" for key in ("bits", "centroids", "m") if codec.get(key) is not None)]),
        "pool": info["pool"],
        "token dim": info["token dim"],
        "query length": info["query length"],
        "document length": info["document length"],
        "fde dims": dims(info),
        "fde index": " + ".join([*(str(fde[key]) for key in ("type", "quantize") if fde.get(key)), *(["4-bit first stage"] if fde.get("first stage") else [])]),
        "candidates": f"{info['candidates']:,}" + ("" if info["rerank"] else " (MUVERA-only search by default)"),
        "fidelity": fidelity(info),
        "dense model": info["dense model"] or "none",
        "content": "stored" if info["content"] else "none",
        "txtai": versions(info["txtai"], info["installed"]["txtai"]),
        "txtai-muvera": versions(info["txtai-muvera"], info["installed"]["txtai-muvera"]),
        "created": info["created"],
        "size": human(info["bytes on disk"]),
        **{f"  {part}": human(size) for part, size in info["bytes by part"].items()},
    }

    width = max(len(key) for key in lines)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in lines.items())


def fidelity(info):
    """
    Describes the fidelity estimate: the share of exact MaxSim's nDCG@10 ranking the stored tokens keep, how it was measured
    and whether the settings were chosen for a target.

    Args:
        info: describe() dict

    Returns:
        str
    """

    estimate = info["fidelity"]
    if not estimate:
        return "not measured (no write of 100 or more documents, or built by a version that did not measure it)"

    how = f"chosen for target {info['fidelity target']:g}" if estimate.get("ladder") else "settings as configured"
    return (
        f"{estimate['fidelity']:.3f} of exact MaxSim nDCG@10, top-10 overlap {estimate['overlap']:.3f} (estimated on "
        f"{estimate['documents']:,} documents, {estimate['queries']} pseudo-queries; {how})"
    )


def dims(info):
    """
    Describes the FDE dimensions: repetitions x buckets x projection, and the count sketch when there is one.

    Args:
        info: describe() dict

    Returns:
        str
    """

    muvera = info["muvera"]
    if not all(muvera.get(key) for key in ("repetitions", "hashes")):
        return f"{info['fde dims']:,}"

    projection = muvera.get("projection") or info["token dim"]
    full = muvera["repetitions"] * 2 ** muvera["hashes"] * projection
    shape = f"{muvera['repetitions']} x 2^{muvera['hashes']} x {projection}"
    if full != info["fde dims"]:
        return f"{info['fde dims']:,} ({shape} = {full:,}, count-sketched)"

    return f"{info['fde dims']:,} ({shape})"


def versions(built, installed):
    """
    Formats the version that built an index next to the installed one.

    Args:
        built: version recorded in the index, or "unknown (...)"
        installed: installed version

    Returns:
        str
    """

    return f"{built} (installed {installed})" if built != installed else built


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
    legacy = header.get("version") == LEGACY
    store = storage(path)
    muvera, ann, vectors = scoring.get("muvera", {}), scoring.get("ann", {}), scoring.get("vectors", {})

    # Build metadata: written by `txtai-muvera index`; txtai's own, for an index that also has a dense part
    build = scoring.get("build") or config.get("build") or {}
    reason = unrecorded(legacy)

    return {
        "index": os.path.abspath(path),
        "documents": header.get("documents"),
        "tokens": store["tokens"],
        "model": scoring.get("path"),
        "fingerprint": scoring.get("fingerprint"),
        # Indexes saved without a preset were built with 0.1.0's settings, which the exact preset keeps
        "preset": scoring.get("preset") or "exact",
        "codec": store["codec"],
        "token dtype": store["dtype"],
        "pool": header.get("pool", scoring.get("pool", 1)),
        "token dim": store["dim"],
        "query length": vectors.get("query_length"),
        "document length": vectors.get("document_length"),
        "fde dims": scoring.get("dimensions"),
        "muvera": muvera,
        "fde index": store["fde index"],
        "ann": {key: value for key, value in ann.items() if key in ("index", "type", "quantize", "hnsw", "ivf", "pq", "fastscan")},
        "rerank": scoring.get("rerank", True),
        "candidates": scoring.get("candidates", 100),
        "fidelity": scoring.get("estimate"),
        "fidelity target": scoring.get("fidelity"),
        "dense model": config.get("path"),
        "content": bool(config.get("content")),
        "txtai": build.get("txtai", reason),
        "txtai-muvera": build.get("txtai-muvera", "0.1.0" if legacy else reason),
        "installed": {"txtai": installed("txtai"), "txtai-muvera": installed("txtai-muvera")},
        "created": build.get("create", reason),
        "bytes on disk": size(path),
        "bytes by part": parts(path),
    }


def storage(path):
    """
    Describes the storage engine's saved files: token codec and counts, FDE index type.

    Args:
        path: index folder

    Returns:
        dict with tokens, codec, dtype, dim, fde index
    """

    scoring = os.path.join(path, "scoring")

    # PostgreSQL engine: the folder holds the table's layout, the rows live in the database
    if os.path.isdir(os.path.join(scoring, "pgvector")):
        layout = readjson(os.path.join(scoring, "pgvector", "header.json"))
        table = ".".join(str(x) for x in (layout.get("schema"), layout.get("table")) if x)
        return {
            "tokens": f"in PostgreSQL table {table}",
            "codec": {"name": layout.get("tokens")},
            "dtype": layout.get("tokens"),
            "dim": layout.get("dim"),
            "fde index": {"type": f"pgvector {layout.get('index')}", "quantize": "sketch" if layout.get("sketch") else None},
        }

    tokens = readjson(os.path.join(scoring, "tokens", "header.json"))
    header = readjson(os.path.join(scoring, "fdes", "header.json"))
    fdes = header.get("config", {})

    # A fastscan index says whether it has its first stage yet (it starts at a number of documents)
    fde = {"type": fdes.get("type"), "quantize": fdes.get("quantize")}
    if fdes.get("type") == "fastscan":
        fde["first stage"] = "scan.faiss" in (header.get("checksums") or {})

    # Indexes saved by 0.1.0 name only a dtype: float16 or float32 rows
    codec = {key: value for key, value in (tokens.get("codec") or {"name": tokens.get("dtype")}).items() if key in ("name", "bits", "centroids", "m")}
    return {
        "tokens": tokens.get("tokens"),
        "codec": codec,
        "dtype": tokens.get("dtype") or codec["name"],
        "dim": tokens.get("dim"),
        "fde index": fde,
    }


def unrecorded(legacy):
    """
    Why an index has no build metadata.

    Args:
        legacy: True for an index saved by 0.1.0

    Returns:
        "unknown (reason)"
    """

    if legacy:
        return "unknown (saved by txtai-muvera 0.1.0, which did not record it)"

    return "unknown (not recorded: built through txtai's Embeddings API, which records no build metadata for late-interaction indexes)"


def installed(name):
    """
    Installed version of a distribution.

    Args:
        name: distribution name

    Returns:
        version, or "not installed"
    """

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


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
