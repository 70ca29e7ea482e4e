"""
Arguments module: argument types and the options every command shares
"""

import argparse

from ...core import schema
from . import defaults

# FDE index types
ANN = ["auto", "flat", "hnsw", "ivf", "fastscan"]


def common(parser):
    """
    Adds the options every command takes: --quiet and --traceback.

    Args:
        parser: command parser
    """

    parser.add_argument("--quiet", action="store_true", help="no progress bars and no info logs")

    # Also accepted before the command; SUPPRESS keeps the value given there
    parser.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of errors")


def index(parser, chosen=None, fixed=None, skip=(), hidden=False, prefix=""):
    """
    Adds the options that shape a new index, shared by `index` and `evaluate` so that one setting has one name. Options left
    out are the preset's: every help text states the value each preset gives.

    Args:
        parser: command parser
        chosen: preset used when --preset is not given, defaults to the preset of new indexes
        fixed: {option: value} the command uses whatever the preset, when the option is not given
        skip: options the command does not take
        hidden: add the `--muvera-*` and `--index` spellings of earlier `evaluate` versions as hidden aliases
        prefix: prefix of the MUVERA options' names in the parsed arguments (`evaluate` keeps `muvera_` from earlier versions)

    Returns:
        {group name: argument group}
    """

    chosen, fixed = chosen or defaults.default(), fixed or {}

    def default(key):
        return f"(default {fixed[key]}, whatever the preset)" if key in fixed else defaults.text(key, chosen)

    def add(group, name, **kwargs):
        if name not in skip:
            metavar = {"metavar": "N"} if kwargs.get("type") in (positive, projection, int) else {}
            group.add_argument(f"--{name}", dest=(prefix + name) if group is muvera else name, **metavar, **kwargs)

    presets = parser.add_argument_group("preset", "named defaults for every option not given: " + "; ".join(map(defaults.summary, schema.PRESETS)))
    presets.add_argument("--preset", choices=list(schema.PRESETS), help=f"named defaults for the options not given (default {chosen})")

    muvera = parser.add_argument_group("MUVERA (FDE dims = repetitions x 2^hashes x projection, before --final)")
    add(muvera, "repetitions", type=positive, help=f"independent partitionings {default('repetitions')}")
    add(muvera, "hashes", type=positive, help=f"SimHash bits per repetition: 2^hashes buckets {default('hashes')}")
    add(muvera, "projection", type=projection, help=f"dims each bucket is projected to, 0 keeps the token dims {default('projection')}")
    add(muvera, "final", type=positive, help=f"count-sketch FDEs larger than this to this many dims {default('final')}")
    add(muvera, "fill", action="store_true", help=f"fill empty document buckets from the nearest token {default('fill')}")
    add(muvera, "seed", type=int, help=f"random seed {default('seed')}")

    store = parser.add_argument_group("storage and search")
    values = defaults.preset(chosen)
    threshold, fastscan = values["threshold"], values["fastscan"]
    add(store, "tokens", choices=defaults.codecs(), help=f"token codec {default('tokens')}")
    add(store, "pool", type=positive, help=f"pool stored document tokens by this factor {default('pool')}")
    add(
        store,
        "ann",
        choices=ANN,
        help=f"FDE index, auto: flat up to {threshold} documents, hnsw above; fastscan: flat, and 4-bit codes scanned first from {fastscan} documents {default('ann')}",
    )
    add(store, "quantize", choices=["sq8", "pq"], help=f"compress stored FDEs {default('quantize')}")
    add(store, "candidates", type=positive, help=f"FDE candidates re-ranked by exact MaxSim per query {default('candidates')}")

    model = parser.add_argument_group("encoding")
    add(model, "device", help="cpu, cuda or cuda:N (default cuda when available)")
    add(model, "batch", type=positive, help=f"model batch size {default('batch')}")
    add(model, "half", action="store_true", default=None, help="16-bit encoding: bfloat16 on CPU (fast with AVX512-BF16 or AMX), float16 on GPU")
    add(model, "threads", type=positive, help="CPU threads for the model (default torch's, one per core); 1 is fastest on a busy machine")

    if hidden:
        # Spellings of earlier versions of `evaluate`, kept so existing scripts work
        for name in ("repetitions", "hashes", "projection", "final", "seed"):
            kind = projection if name == "projection" else int if name == "seed" else positive
            parser.add_argument(f"--muvera-{name}", dest=prefix + name, type=kind, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        parser.add_argument("--muvera-fill", dest=prefix + "fill", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        parser.add_argument("--index", dest="ann", choices=ANN, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    return {"preset": presets, "muvera": muvera, "store": store, "model": model}


def settings(args, prefix=""):
    """
    Builds the scoring config options of a new index from the arguments: only options given are set, the preset covers the rest
    (and the index writes the resolved values back into its config.json).

    Args:
        args: parsed arguments
        prefix: prefix of the MUVERA options' names in args, as given to index()

    Returns:
        dict of scoring config keys
    """

    config = {}
    sections = {
        "muvera": {name: getattr(args, prefix + name, None) for name in ("repetitions", "hashes", "projection", "final", "seed")},
        "vectors": {name: getattr(args, name, None) for name in ("device", "batch", "threads", "half")},
        "ann": {"index": getattr(args, "ann", None), "quantize": getattr(args, "quantize", None)},
    }
    if getattr(args, prefix + "fill", False):
        sections["muvera"]["fill"] = True

    for section, values in sections.items():
        values = {key: value for key, value in values.items() if value is not None}
        if values:
            config[section] = values

    # --projection 0: no projection, buckets keep the token dims
    if config.get("muvera", {}).get("projection") == 0:
        config["muvera"]["projection"] = None

    for key in ("preset", "tokens", "pool", "candidates"):
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)

    return config


def positive(value):
    """
    Argparse type: a positive integer.

    Args:
        value: argument text

    Returns:
        int
    """

    return integer(value, 1, "a positive integer")


def projection(value):
    """
    Argparse type: a projection size, a positive integer or 0 (no projection).

    Args:
        value: argument text

    Returns:
        int
    """

    return integer(value, 0, "a positive integer, or 0 to keep the token dims")


def integer(value, low, expected):
    """
    Parses an integer of at least low.

    Args:
        value: argument text
        low: smallest accepted value
        expected: what is accepted, for the message

    Returns:
        int
    """

    try:
        number = int(value)
    except ValueError:
        number = low - 1

    if number < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")

    return number
