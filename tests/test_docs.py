"""
README and documentation against the code: the preset tables state the preset table in code, every default a key table
states is the code's default, links point at files that exist, the version is the same everywhere, and no page speaks of
anything but the product
"""

import ast
import importlib.util
import inspect
import os
import re

import pytest

from txtai_muvera import __version__
from txtai_muvera.core import ann, schema
from txtai_muvera.core.muvera import Muvera
from txtai_muvera.tools.commands import defaults

# Repository root
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Pages that state settings and defaults
PAGES = ["README.md", "CHANGELOG.md"] + sorted(os.path.join("docs", x) for x in os.listdir(os.path.join(ROOT, "docs")) if x.endswith(".md"))

# Pages a benchmark script writes (benchmarks/footprint.py): their text is the script's
GENERATED = [os.path.join("docs", "footprint.md")]

# Keys every preset may set: their default is "preset" wherever a key table lists them
PRESET = {"pool", "tokens", "candidates", "muvera.final", "ann.index", "ann.quantize"}

# Sentences about how the software was made, not about what it does
BUILD = [
    r"\bgoals?\b",
    r"\bthis machine\b",
    r"\bthe issue\b",
    r"\bissue's\b",
    r"\brooms\b",
    r"\blent\b",
    r"\bsession's time\b",
    r"\bstill running\b",
    r"\bran out\b",
    r"\bseed model\b",
    r"\bseed-shaped\b",
    r"\bnot packaged for\b",
]


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def writer():
    """
    docs/presets.py, the script that writes the preset tables.
    """

    spec = importlib.util.spec_from_file_location("presets", os.path.join(ROOT, "docs", "presets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(text):
    """
    Rows of the markdown tables in text, as lists of cells, with the header each row belongs to.

    Returns:
        list of (header cells, row cells)
    """

    results, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not all(set(x) <= set("-:") for x in cells):
            results.append((header, cells))

    return results


def key(cell):
    """
    The config key a table cell names: its first `code` span.
    """

    match = re.match(r"`([^`]+)`", cell)
    return match.group(1) if match else None


@pytest.mark.parametrize("name", writer().FILES)
def test_preset_table_generated(name):
    # The marked block holds exactly what the code generates: after changing a preset, run `python docs/presets.py`
    match = writer().BLOCK.search(read(name))
    assert match, f"{name} has no <!-- presets --> block"
    assert match.group(0) == writer().block(defaults.table()), f"{name}: the preset table is stale, run python docs/presets.py"


@pytest.mark.parametrize("name", writer().FILES)
def test_preset_table_states_presets(name):
    # Read against the preset table and the classes' own defaults, not through the generator
    muvera = {x: y.default for x, y in inspect.signature(Muvera).parameters.items()}
    index = {x: y.default for x, y in inspect.signature(ann.FDEIndex).parameters.items()}
    table = {key(cells[0]): cells for _, cells in rows(writer().BLOCK.search(read(name)).group(0))}
    assert set(table) == set(schema.PRESETS), table

    for preset, config in schema.PRESETS.items():
        cells = table[preset]
        assert ("(default)" in cells[0]) == (preset == schema.PRESET), cells

        pool = config.get("pool", schema.DEFAULTS["pool"])
        assert cells[1].split()[0] == str(pool), cells

        tokens, bits = config.get("tokens", schema.DEFAULTS["tokens"]), (config.get(config.get("tokens")) or {}).get("bits")
        assert cells[2] == (f"{tokens} {bits}-bit" if bits else tokens), cells

        full = muvera["repetitions"] * 2 ** muvera["hashes"] * muvera["projection"]
        final = (config.get("muvera") or {}).get("final", muvera["final"])
        assert cells[3] == f"{min(final, full) if final else full:,}", cells

        assert cells[4].split()[0] == (config.get("ann") or {}).get("index", index["index"]), cells
        quantize = (config.get("ann") or {}).get("quantize", index["quantize"])
        assert cells[5].split()[0] == (quantize or "none"), cells
        assert cells[6] == f"{config.get('candidates', schema.DEFAULTS['candidates']):,}", cells

        # A fidelity target, where a preset has one
        if any("fidelity" in x for x in schema.PRESETS.values()):
            assert cells[7] == (f"{config['fidelity']:g}" if config.get("fidelity") is not None else "none"), cells
        else:
            assert len(cells) == 7, cells


def expected():
    """
    Defaults the key tables state, from the code: {key: text the default cell must contain}.
    """

    muvera = {x: y.default for x, y in inspect.signature(Muvera).parameters.items()}
    values = {
        "preset": f"`{schema.PRESET}`",
        "backend": f"`{schema.DEFAULTS['backend']}`",
        "rerank": str(schema.DEFAULTS["rerank"]).lower(),
        "batch": f"{schema.DEFAULTS['batch']:,}",
        "muvera.fill": str(muvera["fill"]).lower(),
        "ann.threshold": f"{ann.THRESHOLD:,}",
        "ann.hnsw": "{" + ", ".join(f"{x}: {y}" for x, y in ann.HNSW.items()) + "}",
        "ann.ivf": f"nprobe: {ann.IVF['nprobe']}",
        "ann.fastscan": "factor: {factor}, threshold: {threshold}, sample: {sample}".format(**{x: f"{y}" for x, y in ann.FASTSCAN.items()}),
    }
    values.update({f"muvera.{x}": str(muvera[x]) for x in ("repetitions", "hashes", "projection", "seed")})
    return values


@pytest.mark.parametrize("name", ["README.md", os.path.join("docs", "configuration.md")])
def test_key_defaults(name):
    # Every "| key | default | ..." row states the code's default; keys a preset sets say "preset" and no value
    values, seen = expected(), set()
    for header, cells in rows(read(name)):
        if header[:2] != ["key", "default"]:
            continue
        name = key(cells[0])
        seen.add(name)
        if name in PRESET:
            assert cells[1] == "preset", cells
        elif name in values:
            assert values[name] in cells[1], (cells, values[name])

    # The tables list the keys users change most
    assert {"preset", "pool", "tokens", "candidates", "muvera.final", "ann.index", "ann.quantize"} <= seen, seen


def test_pgvector_defaults():
    # The pgvector key table states the engine's own setting("name", default) values
    source = read(os.path.join("txtai_muvera", "core", "pgvector.py"))
    found = dict(re.findall(r'self\.setting\("(\w+)", ([\w"]+)\)', source))
    table = {key(cells[0]): cells[1] for header, cells in rows(read(os.path.join("docs", "scale-out.md"))) if header[0].startswith("key")}

    assert f"`{found['table'].strip(chr(34))}`" in table["schema"], table
    assert f"`{found['index'].strip(chr(34))}`" == table["index"], table
    assert table["m"] == ", ".join(found[x] for x in ("m", "efconstruction", "efsearch")), table


def test_other_defaults():
    # Defaults the pages state in prose, each against the constant it comes from
    api, files = defaults.constant("txtai_muvera.glue.api", "MAXDOCUMENT"), defaults.constant("txtai_muvera.core.files", "TIMEOUT")
    assert f"{api:,} by default" in read(os.path.join("docs", "yaml.md"))
    assert f"seconds a load or save waits for an index lock ({files:g};" in read(os.path.join("docs", "configuration.md"))

    buckets = defaults.parse("txtai_muvera.core.codecs")
    residual = next(x for x in buckets.body if getattr(x, "name", None) == "Residual")
    options = next(x for x in residual.body if getattr(getattr(x, "targets", [None])[0], "id", None) == "defaults")
    assert f"`buckets: {ast.literal_eval(options.value)['buckets']}` (the default)" in read(os.path.join("docs", "internals.md"))


def test_model_default():
    # The command line's default model, as the pages name it
    model = defaults.constant("txtai_muvera.tools.commands.index", "MODEL")
    assert f"`--model` defaults to `{model}`" in read(os.path.join("docs", "cli.md"))


def test_quickstart():
    # The README's quickstart is one Python block of at most 10 lines, marked for the documentation site and CI
    section = re.search(r"\[start:quickstart\] -->\n(.*?)<!-- --8<-- \[end:quickstart\]", read("README.md"), re.S)
    assert section
    code = re.fullmatch(r"```python\n(.*?)```\n", section.group(1), re.S)
    assert code, section.group(1)
    assert len(code.group(1).strip().splitlines()) <= 10


@pytest.mark.parametrize("name", PAGES)
def test_links(name):
    # Relative links of README, changelog and pages name files that exist (mkdocs build --strict checks pages and anchors)
    folder = os.path.dirname(os.path.join(ROOT, name))
    for target in re.findall(r"\]\(([^)\s]+)\)", read(name)):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(folder, target.split("#")[0]))
        assert os.path.exists(path), f"{name} links to {target}, which does not exist"


def test_version():
    # One version: the package, pyproject.toml and the changelog's newest section
    assert re.search(rf'^version = "{re.escape(__version__)}"$', read("pyproject.toml"), re.M)
    sections = re.findall(r"^## \[([^\]]+)\]", read("CHANGELOG.md"), re.M)
    assert sections and sections[0] == __version__, sections


@pytest.mark.parametrize("name", [x for x in PAGES if x not in GENERATED])
def test_product_only(name):
    # Pages speak of the product: what it does and how it was measured, not how it was made
    text = read(name)
    for pattern in BUILD:
        match = re.search(pattern, text, re.I)
        assert not match, f"{name}: {text[max(match.start() - 80, 0):match.end() + 80]!r}"
