"""
Schema module: one place that checks every setting of a late-interaction index config before anything is built
"""

import math
import numbers

from .storage import ENGINES

# Index-level settings and their defaults, written back into the config when missing
DEFAULTS = {"backend": "faiss", "tokens": "float16", "pool": 1, "candidates": 100, "rerank": True, "batch": 1024}

# Keys of a scoring config this package reads, besides the ones txtai itself sets (method, terms, columns, ...)
KEYS = {"path", "vectors", "muvera", "ann", "fingerprint", "dimensions", "dim", "offset", *DEFAULTS, *ENGINES}

# Token codecs by name. The codec module adds compressed ones; the three fixed ones are always there.
FIXED = ("float32", "float16", "int8")


def codecs():
    """
    Accepted token codec names.

    Returns:
        tuple of names
    """

    try:
        from .codecs import CODECS

        return tuple(CODECS)
    except ImportError:
        return FIXED


def check(config):
    """
    Checks a scoring config and fills in defaults, in place. Raises a ValueError (TypeError for wrong container types) that
    names the key, the bad value and what is accepted.

    Args:
        config: scoring config dict

    Returns:
        config
    """

    if not isinstance(config, dict):
        raise TypeError(f"Scoring config must be a dict, got {type(config).__name__}")

    path = config.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"path must name a late-interaction checkpoint (local folder or hub id), got {path!r}")

    for key, value in DEFAULTS.items():
        config.setdefault(key, value)

    for key in ("vectors", "muvera", "ann"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise TypeError(f"{key} must be a dict of options, got {type(config[key]).__name__} {config[key]!r}")

    if config["backend"] not in ENGINES:
        raise ValueError(f"backend must be one of {', '.join(ENGINES)}, got {config['backend']!r}")

    accepted = codecs()
    if not isinstance(config["tokens"], str) or config["tokens"] not in accepted:
        raise ValueError(f"tokens must be one of {', '.join(accepted)}, got {config['tokens']!r}")

    for key, low in (("pool", 1), ("candidates", 1), ("batch", 1)):
        config[key] = integer(key, config[key], low)

    if not isinstance(config["rerank"], bool):
        raise ValueError(f"rerank must be true or false, got {config['rerank']!r}")

    ann = config.get("ann") or {}
    for group, names in (("hnsw", ("m", "efconstruction", "efsearch")), ("ivf", ("nprobe",))):
        options = ann.get(group) or {}
        if not isinstance(options, dict):
            raise TypeError(f"ann.{group} must be a dict, got {options!r}")
        for name in names:
            if options.get(name) is not None:
                options[name] = integer(f"ann.{group}.{name}", options[name], 2 if name == "m" else 1)
    if ann.get("ivf", {}) and ann["ivf"].get("nlist") is not None:
        ann["ivf"]["nlist"] = integer("ann.ivf.nlist", ann["ivf"]["nlist"], 1)

    return config


def integer(name, value, low):
    """
    Checks an integer setting. Booleans, floats with a fraction and strings are refused, integral floats are accepted.

    Args:
        name: setting name, for the message
        value: value
        low: smallest accepted value

    Returns:
        int
    """

    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    return int(value)
