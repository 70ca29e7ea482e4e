"""
Defaults module: the settings a new index gets from each preset, for help text. Read from the package's own tables (the preset
table in core/schema.py, the constructor defaults of Muvera, FDEIndex and ColBERT) without importing torch, faiss or txtai, so
`--help` states what an index really gets and stays fast.
"""

import ast
import functools
import os

from ...core import schema

# Where each default lives: (module, class) for constructor defaults, (module, None) for module constants
SOURCES = {
    "muvera": ("txtai_muvera.core.muvera", "Muvera"),
    "ann": ("txtai_muvera.core.ann", "FDEIndex"),
    "model": ("txtai_muvera.core.models.colbert", "ColBERT"),
}


def preset(name):
    """
    Settings of a new index built with a preset and no other option.

    Args:
        name: preset name, a key of schema.PRESETS

    Returns:
        dict: tokens, bits (residual and adaptive codecs), pool, candidates, repetitions, hashes, projection, seed, fill, final, ann, quantize,
        threshold, fastscan (its threshold), efsearch, nprobe, batch
    """

    if name not in schema.PRESETS:
        raise ValueError(f"preset must be one of {', '.join(schema.PRESETS)}, got {name!r}")

    config = schema.PRESETS[name]
    muvera, ann = signature(*SOURCES["muvera"]), signature(*SOURCES["ann"])
    module = SOURCES["ann"][0]

    return {
        "tokens": config.get("tokens", schema.DEFAULTS["tokens"]),
        "bits": (config.get(config.get("tokens")) or {}).get("bits"),
        "pool": config.get("pool", schema.DEFAULTS["pool"]),
        "candidates": config.get("candidates", schema.DEFAULTS["candidates"]),
        **{key: muvera[key] for key in ("repetitions", "hashes", "projection", "seed", "fill")},
        "final": (config.get("muvera") or {}).get("final", muvera["final"]),
        "ann": (config.get("ann") or {}).get("index", ann["index"]),
        "quantize": (config.get("ann") or {}).get("quantize", ann["quantize"]),
        "threshold": constant(module, "THRESHOLD"),
        "fastscan": constant(module, "FASTSCAN")["threshold"],
        "efsearch": constant(module, "HNSW")["efsearch"],
        "nprobe": constant(module, "IVF")["nprobe"],
        "batch": signature(*SOURCES["model"])["batch"],
    }


def default():
    """
    Preset of new indexes that name none.

    Returns:
        preset name
    """

    return schema.default()


def codecs():
    """
    Token codec names, the keys of the codec table.

    Returns:
        list of names
    """

    for node in parse("txtai_muvera.core.codecs").body:
        if isinstance(node, ast.Assign) and any(isinstance(x, ast.Name) and x.id == "CODECS" for x in node.targets):
            return [ast.literal_eval(key) for key in node.value.keys]

    raise LookupError("txtai_muvera.core.codecs has no CODECS table")


def text(key, chosen=None, lead=None):
    """
    Help text for a default: "(default X)" when every preset agrees, else "(default X; by preset: a X, b Y, ...)", the default
    preset first.

    Args:
        key: setting name, a key of preset()
        chosen: preset whose value is the default, defaults to the preset of new indexes
        lead: what the default is, in place of the chosen preset's value (e.g. a saved index's own setting)

    Returns:
        str
    """

    chosen = chosen or default()
    names = [chosen] + [x for x in schema.PRESETS if x != chosen]
    values = {name: show(key, preset(name)) for name in names}
    if len(set(values.values())) == 1:
        return f"(default {lead + ': ' if lead else ''}{values[chosen]})"

    return f"(default {lead or values[chosen]}; by preset: {', '.join(f'{name} {value}' for name, value in values.items())})"


def show(key, settings):
    """
    Formats one setting for help text.

    Args:
        key: setting name
        settings: preset() dict

    Returns:
        str
    """

    value = settings[key]
    if key == "tokens" and settings["bits"]:
        return f"{value} {settings['bits']}-bit"
    if isinstance(value, bool):
        return "on" if value else "off"

    return "none" if value is None else str(value)


def summary(name):
    """
    One-line description of what a preset builds.

    Args:
        name: preset name

    Returns:
        str
    """

    settings = preset(name)
    tokens = show("tokens", settings) + (f" tokens pooled by {settings['pool']}" if settings["pool"] > 1 else " tokens")
    fdes = f"{settings['final']}-dim" if settings["final"] else "full-size"
    fdes += f" {settings['quantize']}" if settings["quantize"] else " float"
    return f"{name}: {tokens}, {fdes} FDEs ({settings['ann']} index), {settings['candidates']} candidates"


def table():
    """
    The presets as a markdown table, the package default first: the table the README and the documentation show between
    `<!-- presets -->` markers (`python docs/presets.py` writes it there, tests/test_docs.py checks it).

    Returns:
        str
    """

    names = [schema.PRESET] + [x for x in schema.PRESETS if x != schema.PRESET]

    # A fidelity target (a share of exact MaxSim nDCG@10 the first write chooses pool and codec for) gets a column when a preset has one
    fidelity = any("fidelity" in x for x in schema.PRESETS.values())
    rows = [
        "| `preset` | `pool` | `tokens` | FDE dims (`muvera.final`) | `ann.index` | `ann.quantize` | `candidates` |"
        + (" `fidelity` |" if fidelity else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if fidelity else ""),
    ]
    for name in names:
        settings = preset(name)

        # FDE dims: repetitions x 2^hashes x projection (the token dim when there is no projection), count-sketched to final
        full = settings["repetitions"] * 2 ** settings["hashes"] * settings["projection"] if settings["projection"] else None
        if settings["final"] and (full is None or settings["final"] < full):
            dims = f"{settings['final']:,}"
        else:
            dims = f"{full:,}" if full else f"{settings['repetitions']} x 2^{settings['hashes']} x token dim"

        index = settings["ann"]
        if index == "auto":
            index = f"auto (flat up to {settings['threshold']:,} documents, HNSW above)"
        elif index == "fastscan":
            index = f"fastscan (flat below {settings['fastscan']:,} documents, a 4-bit first stage from there)"

        rows.append(
            f"| `{name}`{' (default)' if name == schema.PRESET else ''} | {settings['pool'] if settings['pool'] > 1 else '1 (none)'} | "
            f"{show('tokens', settings)} | {dims} | {index} | {settings['quantize'] or 'none (float32)'} | {settings['candidates']:,} |"
        )
        if fidelity:
            target = schema.PRESETS[name].get("fidelity")
            rows[-1] += f" {target:g} |" if target is not None else " none |"

    return "\n".join(rows) + "\n"


@functools.lru_cache(maxsize=None)
def parse(module):
    """
    Parses the source of one of the package's modules without importing it.

    Args:
        module: module path, txtai_muvera.*

    Returns:
        ast.Module
    """

    # The file is found from the package folder: finding it through the import system would import its parent packages
    parts = module.split(".")
    if parts[0] != "txtai_muvera":
        raise ValueError(f"module must be part of txtai_muvera, got {module!r}")

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), *parts[1:]) + ".py"
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


@functools.lru_cache(maxsize=None)
def signature(module, name):
    """
    Literal defaults of a class constructor's keyword arguments.

    Args:
        module: module path
        name: class name

    Returns:
        {argument: default}
    """

    for node in parse(module).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            for function in node.body:
                if isinstance(function, ast.FunctionDef) and function.name == "__init__":
                    arguments = function.args.args[-len(function.args.defaults) :] if function.args.defaults else []
                    return {argument.arg: literal(module, value) for argument, value in zip(arguments, function.args.defaults)}

    raise LookupError(f"{module} has no class {name} with an __init__")


def constant(module, name):
    """
    Literal value of a module-level constant, `NAME = value` or `A, B = (a, b)`.

    Args:
        module: module path
        name: constant name

    Returns:
        value
    """

    for node in parse(module).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    return literal(module, node.value)
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for element, value in zip(target.elts, node.value.elts):
                        if isinstance(element, ast.Name) and element.id == name:
                            return literal(module, value)

    raise LookupError(f"{module} has no constant {name}")


def literal(module, node):
    """
    Value of a literal expression, where a bare name is a constant of the same module (`threshold=THRESHOLD`).

    Args:
        module: module path
        node: ast expression

    Returns:
        value
    """

    return constant(module, node.id) if isinstance(node, ast.Name) else ast.literal_eval(node)
