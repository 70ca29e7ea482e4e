"""
Schema module: one place that checks every setting of a late-interaction index config before anything is built
"""

import math
import numbers
import os

from .storage import ENGINES

# Index-level settings and their defaults, written back into the config when missing
DEFAULTS = {"backend": "faiss", "tokens": "float16", "pool": 1, "candidates": 100, "rerank": True, "batch": 1024}

# Named sets of defaults for new indexes, chosen from measured tables (docs/benchmarks.md, docs/fidelity.md). Keys a config
# sets itself win.
#  - exact: 0.1.0's settings: float16 tokens, no pooling, full-size float FDEs, 100 candidates
#  - compact (default): a fidelity target of 0.975 (core/fidelity.py): the first write measures how much of exact MaxSim's
#    ranking each token setting of the ladder keeps on its own documents and keeps the smallest that reaches the target. Listed
#    here is what an index keeps when no measurement chose (a first write under 100 documents): tokens pooled by 2 and stored as
#    2.5-bit adaptive residuals, which the ladder chose on SciFact (12.9 kB/doc). FDEs count-sketched to 2,048 dims and stored
#    as sq8, searched exactly (flat) up to the fast-scan threshold and through a 4-bit PQ fast-scan first stage from there
#    (core/ann.py FASTSCAN: at a million documents a flat scan costs ~0.5 s per query), 1,000 candidates (at 300 SciFact fell
#    to 0.982 of exact MaxSim's nDCG@10). PQ-256-8 FDEs kept more candidate recall but took 750 s to train on 5k documents
#  - small: tokens pooled by 3 as 2-bit residuals, 300 candidates, no target: smaller and faster, 0.987 of exact nDCG@10 on
#    SciFact; its fidelity is measured and reported all the same
PRESETS = {
    "exact": {"tokens": "float16", "pool": 1},
    "compact": {"tokens": "adaptive", "adaptive": {"bits": 2.5}, "pool": 2, "muvera": {"final": 2048}, "ann": {"index": "fastscan", "quantize": "sq8"}, "candidates": 1000, "fidelity": 0.975},
    "small": {"tokens": "residual", "residual": {"bits": 2}, "pool": 3, "muvera": {"final": 2048}, "ann": {"index": "fastscan", "quantize": "sq8"}, "candidates": 300},
}

# Preset of new indexes that name none (an environment variable can change it for a process, e.g. in tests)
PRESET = "compact"

# Keys of a scoring config this package reads, besides the ones txtai itself sets (method, terms, columns, ...)
KEYS = {"path", "preset", "vectors", "muvera", "ann", "fingerprint", "dimensions", "dim", "offset", "fidelity", "choose", "estimate", *DEFAULTS, *ENGINES}

# Settings the fidelity ladder chooses (core/fidelity.py): a config that sets any of them keeps its own
CHOSEN = ("pool", "tokens")

# Token codecs by name. The codec module adds compressed ones; the three fixed ones are always there.
FIXED = ("float32", "float16", "int8")


def default():
    """
    Preset of new indexes that name none.

    Returns:
        PRESET, or the TXTAI_MUVERA_PRESET environment variable when set
    """

    return os.environ.get("TXTAI_MUVERA_PRESET", PRESET)


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

    # A saved index (it has a fingerprint) without a preset was built with 0.1.0's settings: missing keys mean those
    preset = config.get("preset") or ("exact" if config.get("fingerprint") else default())
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    config["preset"] = preset

    # A fidelity target lets the first write choose the token settings (pool, codec) from the ladder, unless the config sets
    # them. The preset's own values fill in meanwhile, and stay when the first write is too small to measure
    target = config.get("fidelity", PRESETS[preset].get("fidelity"))
    if target is not None and (isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target <= 1):
        raise ValueError(f"fidelity must be a share of exact MaxSim nDCG@10 in (0, 1], or null to keep the token settings as given, got {target!r}")
    config["fidelity"] = float(target) if target is not None else None
    if "choose" not in config:
        config["choose"] = target is not None and not any(config.get(key) is not None for key in CHOSEN) and not config.get("fingerprint")

    # MUVERA settings of a preset depend on the token dim: the scoring class applies them (see `muvera`)
    for key, value in PRESETS[preset].items():
        if key in ("muvera", "fidelity"):
            continue
        if isinstance(value, dict):
            if config.get(key) is not None and not isinstance(config[key], dict):
                raise TypeError(f"{key} must be a dict of options, got {type(config[key]).__name__} {config[key]!r}")
            config[key] = {**value, **(config.get(key) or {})}
        else:
            config.setdefault(key, value)

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
    lows = {("hnsw", "m"): 2, ("fastscan", "threshold"): 0}
    for group, names in (("hnsw", ("m", "efconstruction", "efsearch")), ("ivf", ("nprobe",)), ("fastscan", ("m", "factor", "threshold", "sample"))):
        options = ann.get(group) or {}
        if not isinstance(options, dict):
            raise TypeError(f"ann.{group} must be a dict, got {options!r}")
        for name in names:
            if options.get(name) is not None:
                options[name] = integer(f"ann.{group}.{name}", options[name], lows.get((group, name), 1))
    if ann.get("index") == "fastscan" and ann.get("quantize") not in (None, "sq8"):
        raise ValueError(
            f"index fastscan re-scores float or sq8 vectors: quantize must be None or sq8, got {ann['quantize']!r} (set ann.index to flat, hnsw or auto for {ann['quantize']} FDEs)"
        )
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


def muvera(config, dim):
    """
    MUVERA options of a config with its preset's defaults: a preset's final projection applies only when the config sets no
    `final` of its own and the FDE is larger than that projection.

    Args:
        config: checked scoring config
        dim: token dimension

    Returns:
        Muvera keyword arguments
    """

    from .muvera import Muvera

    options = dict(config.get("muvera") or {})
    final = PRESETS[config["preset"]].get("muvera", {}).get("final")
    if final and "final" not in options and Muvera(**options).dimensions(dim) > final:
        options["final"] = final

    return options
