"""
Command line help and usage: --help loads no model library, every default it states is the one an index gets, index and
evaluate share option names, usage errors show the command's usage, --quiet silences progress bars and info logs
"""

import argparse
import functools
import inspect
import io
import json
import os
import re
import subprocess
import sys

import pytest

from txtai_muvera.core import ann, schema
from txtai_muvera.core.models import ColBERT
from txtai_muvera.core.muvera import Muvera
from txtai_muvera.tools.cli import create, main

from checkpoints import build_pylate_checkpoint
from texts import SENTENCES

# Every command, and the top level
COMMANDS = [[], ["index"], ["search"], ["info"], ["standin"], ["evaluate"]]

# Modules --help must not import: the model and index libraries, and what only a command's run needs
HEAVY = ("torch", "faiss", "txtai", "transformers", "ranx", "safetensors", "scipy", "numpy", "huggingface_hub", "tqdm")

# Settings an index's help states and evaluate shares, by option name
SETTINGS = ["repetitions", "hashes", "projection", "final", "fill", "seed", "tokens", "ann", "quantize", "candidates", "batch"]


def imported(code):
    """
    Runs code in a fresh interpreter and returns the HEAVY modules it imported.
    """

    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(x for x in {HEAVY!r} if x in sys.modules)))"
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=environment())
    return set(json.loads(output.stdout.strip().splitlines()[-1]))


def environment():
    # The package default preset, as a user gets it
    return {**os.environ, "TXTAI_MUVERA_PRESET": schema.PRESET, "HF_HUB_OFFLINE": "1"}


def helpcode(command):
    return f"from txtai_muvera.tools.cli import main\nimport contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n    assert main({command + ['--help']!r}) == 0"


@functools.lru_cache(maxsize=None)
def package():
    """
    HEAVY modules that importing the package itself loads: the command line may add nothing to them.
    """

    return frozenset(imported("import txtai_muvera"))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda x: x[0] if x else "top")
def test_help_adds_no_imports(command):
    # Every HEAVY module that --help loads is one `import txtai_muvera` loads already; txtai never
    modules = imported(helpcode(command))
    assert modules <= package(), modules - package()
    assert "txtai" not in modules and "transformers" not in modules and "ranx" not in modules


@pytest.mark.parametrize("command", COMMANDS, ids=lambda x: x[0] if x else "top")
def test_help_imports_no_model_library(command):
    assert not {"torch", "faiss", "txtai"} & imported(helpcode(command))


def expected():
    """
    Settings of a new index per preset, from the preset table and the classes' own defaults (imported here, unlike in --help).

    Returns:
        {preset: {option: value as help shows it}}
    """

    muvera = {name: value.default for name, value in inspect.signature(Muvera).parameters.items()}
    index = inspect.signature(ann.FDEIndex).parameters
    results = {}
    for name, config in schema.PRESETS.items():
        tokens = config.get("tokens", schema.DEFAULTS["tokens"])
        bits = (config.get(config.get("tokens")) or {}).get("bits")
        values = {
            "tokens": f"{tokens} {bits}-bit" if bits else tokens,
            "pool": config.get("pool", schema.DEFAULTS["pool"]),
            "candidates": config.get("candidates", schema.DEFAULTS["candidates"]),
            "final": (config.get("muvera") or {}).get("final", muvera["final"]),
            "ann": (config.get("ann") or {}).get("index", index["index"].default),
            "quantize": (config.get("ann") or {}).get("quantize", index["quantize"].default),
            "fill": "on" if muvera["fill"] else "off",
            "efsearch": ann.HNSW["efsearch"],
            "nprobe": ann.IVF["nprobe"],
            "batch": inspect.signature(ColBERT).parameters["batch"].default,
            **{key: muvera[key] for key in ("repetitions", "hashes", "projection", "seed")},
        }
        results[name] = {key: "none" if value is None else str(value) for key, value in values.items()}

    return results


def helptext(capsys, monkeypatch, command):
    """
    Help text of a command, one option per line.

    Returns:
        {option: help text}
    """

    monkeypatch.setenv("COLUMNS", "1000")
    capsys.readouterr()
    assert main([command, "--help"]) == 0
    options, option = {}, None
    for line in capsys.readouterr().out.splitlines():
        # "  --name [VALUE]  help" or "  --name {a,b}" with the help on the lines below
        match = re.match(r"^  (-[\w-]+(?:, --[\w-]+)?)(?: \S+)?(?:\s{2,}(.*))?$", line)
        if match:
            option = match.group(1).split(", ")[-1].lstrip("-")
            options[option] = match.group(2) or ""
        elif option and line.startswith(" " * 4):
            options[option] = f"{options[option]} {line.strip()}".strip()
        else:
            option = None

    return options


def defaults(text):
    """
    Parses "(default X)" or "(default X; by preset: a X, b Y)" at the end of a help text.

    Returns:
        (default, {preset: value}) where the preset map is empty when all presets agree
    """

    match = re.search(r"\(default ([^;()]+?)(?:; by preset: ([^()]+))?\)$", text)
    assert match, text
    presets = dict(item.split(" ", 1) for item in match.group(2).split(", ")) if match.group(2) else {}
    return match.group(1), presets


@pytest.mark.parametrize("preset", list(schema.PRESETS))
def test_index_help_defaults(capsys, monkeypatch, preset):
    # The preset of new indexes (the package default, or TXTAI_MUVERA_PRESET) gives the default shown; every preset is listed
    monkeypatch.setenv("TXTAI_MUVERA_PRESET", preset)
    options, table = helptext(capsys, monkeypatch, "index"), expected()
    assert defaults(options["preset"])[0] == preset

    for option in [*SETTINGS, "pool"]:
        default, presets = defaults(options[option])
        assert default == table[preset][option], (option, options[option])
        assert presets == ({name: values[option] for name, values in table.items()} if len({x[option] for x in table.values()}) > 1 else {})


def test_package_default_preset(capsys, monkeypatch):
    monkeypatch.delenv("TXTAI_MUVERA_PRESET")
    options = helptext(capsys, monkeypatch, "index")
    assert defaults(options["preset"])[0] == schema.PRESET == "compact"
    assert defaults(options["candidates"])[0] == str(schema.PRESETS["compact"]["candidates"])


def test_search_help_defaults(capsys, monkeypatch):
    # Search settings are the index's own: every preset's value is listed
    options, table = helptext(capsys, monkeypatch, "search"), expected()
    for option in ("candidates", "efsearch", "nprobe"):
        default, presets = defaults(options[option])
        assert default.startswith("the index's setting")
        if presets:
            assert presets == {name: values[option] for name, values in table.items()}
        else:
            assert default.endswith(": " + table[schema.PRESET][option])


def test_evaluate_help_defaults(capsys, monkeypatch):
    # evaluate defaults to the exact preset (0.1.0's settings, the tables of docs/benchmarks.md) and exact FDE search
    options, table = helptext(capsys, monkeypatch, "evaluate"), expected()
    assert defaults(options["preset"])[0] == "exact"
    for option in SETTINGS:
        default, _ = defaults(options[option])
        assert default == ("flat, whatever the preset" if option == "ann" else table["exact"][option]), option


def test_index_gets_help_defaults(tmp_path, capsys, monkeypatch):
    # What help states is what an index with no options is built with
    monkeypatch.setenv("TXTAI_MUVERA_PRESET", schema.PRESET)
    options = {key: defaults(value)[0] for key, value in helptext(capsys, monkeypatch, "index").items() if key in [*SETTINGS, "pool"]}

    checkpoint = build_pylate_checkpoint(tmp_path / "model", hidden=32, dim=16, document_length=48)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": text}) for text in SENTENCES), encoding="utf-8")
    assert main(["index", str(corpus), str(tmp_path / "index"), "--model", checkpoint, "--quiet"]) == 0

    with open(tmp_path / "index" / "config.json", encoding="utf-8") as f:
        scoring = json.load(f)["scoring"]

    bits = (scoring.get(scoring["tokens"]) or {}).get("bits")
    assert options["tokens"] == (f"{scoring['tokens']} {bits}-bit" if bits else scoring["tokens"])
    assert options["pool"] == str(scoring["pool"]) and options["candidates"] == str(scoring["candidates"])
    assert options["ann"] == scoring["ann"]["index"] and options["quantize"] == str(scoring["ann"]["quantize"] or "none")
    for key in ("repetitions", "hashes", "projection", "seed", "final"):
        assert options[key] == str(scoring["muvera"][key]), key
    assert options["fill"] == ("on" if scoring["muvera"]["fill"] else "off")

    # The FDE of this model (20 x 2^5 x 16 = 10,240 dims) is larger than --final: it was count-sketched
    assert scoring["dimensions"] == int(options["final"])


def flags(parser):
    return {option for action in parser._actions for option in action.option_strings if action.help != argparse.SUPPRESS}


def hidden(parser):
    return {option: action.dest for action in parser._actions for option in action.option_strings if action.help == argparse.SUPPRESS}


def test_index_evaluate_share_names():
    _, _, parsers = create()
    index, evaluate = flags(parsers["index"]), flags(parsers["evaluate"])

    # Every setting has the same name in both commands; pooling is the preset's in evaluate
    for option in [*SETTINGS, "preset", "device", "threads", "half", "quiet"]:
        assert f"--{option}" in index and f"--{option}" in evaluate, option
    assert "--pool" in index and "--pool" not in evaluate

    # Earlier evaluate spellings still work, hidden from help
    aliases = hidden(parsers["evaluate"])
    assert {"--muvera-repetitions", "--muvera-hashes", "--muvera-projection", "--muvera-final", "--muvera-seed", "--muvera-fill", "--index"} <= set(
        aliases
    )


@pytest.mark.parametrize(
    "old, new",
    [
        (["--muvera-repetitions", "3", "--muvera-hashes", "2"], ["--repetitions", "3", "--hashes", "2"]),
        (["--muvera-projection", "0", "--muvera-seed", "5"], ["--projection", "0", "--seed", "5"]),
        (["--muvera-final", "64", "--muvera-fill"], ["--final", "64", "--fill"]),
        (["--index", "hnsw"], ["--ann", "hnsw"]),
    ],
)
def test_evaluate_aliases(old, new):
    parser, _, _ = create()
    assert vars(parser.parse_args(["evaluate", "folder", *old])) == vars(parser.parse_args(["evaluate", "folder", *new]))


def test_evaluate_settings():
    # evaluate turns the same options into the same index settings as index
    # pylint: disable=C0415
    from txtai_muvera.tools.commands import arguments

    parser, _, _ = create()
    options = ["--repetitions", "3", "--projection", "0", "--final", "64", "--fill", "--tokens", "int8", "--quantize", "sq8", "--candidates", "9"]
    index = arguments.settings(parser.parse_args(["index", "in.jsonl", "out", *options]))
    evaluate = arguments.settings(parser.parse_args(["evaluate", "folder", *options]), "muvera_")
    assert index == evaluate
    assert index["muvera"] == {"repetitions": 3, "projection": None, "final": 64, "fill": True}
    assert index["tokens"] == "int8" and index["ann"] == {"quantize": "sq8"} and index["candidates"] == 9


@pytest.mark.parametrize(
    "command, args", [("index", ["in.jsonl", "out"]), ("search", ["index", "query"]), ("info", ["index"]), ("standin", []), ("evaluate", ["folder"])]
)
def test_usage_errors(capsys, command, args):
    # An unknown option: the command's usage, exit 2
    capsys.readouterr()
    assert main([command, *args, "--no-such-option"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"usage: txtai-muvera {command} ") and "unrecognized arguments: --no-such-option" in error, error

    # A missing argument or a bad value: the command's usage, exit 2
    if args:
        assert main([command]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"usage: txtai-muvera {command} ") and "required" in error, error
    else:
        assert main([command, "a", "b"]) == 2
        assert capsys.readouterr().err.startswith(f"usage: txtai-muvera {command} ")


def test_top_level_usage(capsys):
    capsys.readouterr()
    assert main(["--no-such-option"]) == 2
    assert capsys.readouterr().err.startswith("usage: txtai-muvera [-h]")


class Terminal(io.StringIO):
    """
    Captured stderr that says it is a terminal, where progress bars show.
    """

    def isatty(self):
        return True


def test_quiet(tmp_path, monkeypatch):
    checkpoint = build_pylate_checkpoint(tmp_path / "model", hidden=32, dim=16, document_length=48)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": text}) for text in SENTENCES), encoding="utf-8")
    command = ["index", str(corpus), "--model", checkpoint]

    def run(*args):
        stderr = Terminal()
        monkeypatch.setattr(sys, "stderr", stderr)
        assert main([*command, *args]) == 0
        monkeypatch.undo()
        return stderr.getvalue()

    # On a terminal: a bar for each step and the info log
    output = run(str(tmp_path / "loud"))
    for step in ("Checking", "Encoding", "Encoding the last batch, building the index", "Saving"):
        assert f"{step}:" in output, output
    assert f"| 0/{len(SENTENCES)} [" in output and f"Indexing {len(SENTENCES)} documents" in output

    # --quiet: nothing at all on stderr
    assert run(str(tmp_path / "quiet"), "--quiet") == ""


def test_no_terminal(tmp_path, capsys):
    # Piped or captured output holds no progress bar, only the info log
    checkpoint = build_pylate_checkpoint(tmp_path / "model", hidden=32, dim=16, document_length=48)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": text}) for text in SENTENCES), encoding="utf-8")
    capsys.readouterr()
    assert main(["index", str(corpus), str(tmp_path / "index"), "--model", checkpoint]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [f"Indexing {len(SENTENCES)} documents from {corpus} with {checkpoint}"]


def test_package_import_is_light():
    # `import txtai_muvera` registers the txtai hooks without loading torch, faiss or txtai: the heavy layers load on first use
    assert not {"torch", "faiss", "txtai"} & package()
