"""
Command line: index, search, info, standin and evaluate wiring, with one-line errors naming the bad file and line
"""

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from txtai import Embeddings

import txtai_muvera

from txtai_muvera import ColBERT, Muvera, islateinteraction
from txtai_muvera.tools import standin
from txtai_muvera.tools.cli import main

from checkpoints import build_pylate_checkpoint
from texts import QUERIES, SENTENCES

TEXTS = SENTENCES


# The stand-in's encoding settings (txtai_muvera.tools.standin)
STANDIN = {"query_prefix": "", "document_prefix": "", "query_length": 32, "document_length": 180, "do_query_expansion": False, "skiplist_words": []}

MUVERA = ["--repetitions", "4", "--hashes", "3", "--projection", "8", "--seed", "7"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=48)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(TEXTS):
            # Every other row has an id and a title; extra fields are kept
            row = {"id": f"d{i}", "title": "title", "text": text, "group": i % 2} if i % 2 else {"text": text, "group": i % 2}
            f.write(json.dumps(row) + "\n")
        f.write("\n")

    return path


@pytest.fixture(scope="module")
def index(checkpoint, corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("index") / "index"
    assert main(["index", str(corpus), str(output), "--model", checkpoint, "--quiet", *MUVERA]) == 0
    return output


def indexed():
    """
    Texts as indexed from the corpus fixture: the title is prepended to the text.
    """

    return [f"title\n{text}" if i % 2 else text for i, text in enumerate(TEXTS)]


def reference(checkpoint, texts, queries, limit, rerank=True):
    """
    Brute force: exact MaxSim with plain loops (float16-stored tokens), or the FDE inner product for MUVERA only.

    Returns:
        list of [position] per query
    """

    model, encoder = ColBERT(checkpoint), Muvera(repetitions=4, hashes=3, projection=8, seed=7)
    dtokens = model.encode(texts, "data")
    dfdes = encoder(dtokens, "data")

    results = []
    for query in model.encode(queries, "query"):
        if rerank:
            scores = [np.mean([max(float(np.dot(q, d)) for d in tokens.astype(np.float16).astype(np.float32)) for q in query]) for tokens in dtokens]
        else:
            scores = list(dfdes @ encoder([query], "query")[0])
        results.append(sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:limit])

    return results


def uids(positions):
    # Rows without an id get their position, stored as text by txtai
    return [f"d{i}" if i % 2 else str(i) for i in positions]


def search(capsys, *args):
    capsys.readouterr()
    assert main(["search", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def error(capsys, args, *parts):
    """
    Runs a command that must fail as a user error: status 2 and one line on stderr naming every part.
    """

    capsys.readouterr()
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    for part in parts:
        assert str(part) in lines[0], lines[0]

    return lines[0]


def test_index_search(checkpoint, index, capsys):
    expected = reference(checkpoint, indexed(), QUERIES, 3)

    # One query, table output
    capsys.readouterr()
    assert main(["search", str(index), QUERIES[0], "--limit", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"query: {QUERIES[0]}" and [line.split()[2] for line in table[2:5]] == uids(expected[0])

    # JSON output: exact MaxSim ranking, extra fields kept as content
    results = search(capsys, str(index), QUERIES[1], "--limit", "3")
    assert [row["id"] for row in results[0]["results"]] == uids(expected[1])

    # Per-call knobs are accepted; MUVERA-only ranks by the FDE inner product (flat index: exact)
    results = search(capsys, str(index), QUERIES[2], "--limit", "3", "--candidates", "5", "--efsearch", "16", "--nprobe", "2")
    assert len(results[0]["results"]) == 3
    results = search(capsys, str(index), QUERIES[0], "--limit", "3", "--no-rerank")
    assert [row["id"] for row in results[0]["results"]] == uids(reference(checkpoint, indexed(), QUERIES[:1], 3, rerank=False)[0])


def test_queries_file(checkpoint, index, tmp_path, capsys):
    expected = reference(checkpoint, indexed(), QUERIES, 2)

    plain = tmp_path / "queries.txt"
    plain.write_text("\n".join(QUERIES) + "\n\n", encoding="utf-8")
    results = search(capsys, str(index), "--queries", str(plain), "--limit", "2")
    assert [[row["id"] for row in result["results"]] for result in results] == [uids(x) for x in expected]

    rows = tmp_path / "queries.jsonl"
    rows.write_text("\n".join(json.dumps({"id": f"q{i}", "text": query}) for i, query in enumerate(QUERIES)), encoding="utf-8")
    results = search(capsys, str(index), "--queries", str(rows), "--limit", "2")
    assert [result["id"] for result in results] == ["q0", "q1", "q2"]
    assert [[row["id"] for row in result["results"]] for result in results] == [uids(x) for x in expected]


def test_info(index, checkpoint, capsys):
    capsys.readouterr()
    assert main(["info", str(index), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == len(TEXTS) and info["model"] == checkpoint and info["token dim"] == 16
    assert info["muvera"]["repetitions"] == 4 and info["fde dims"] == 4 * 2**3 * 8 and info["token dtype"] == "float16"
    assert info["tokens"] > len(TEXTS)
    assert info["bytes on disk"] == sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(index) for n in names)

    # How it was built: the tests' preset (exact), its codec, pooling, FDE index and candidates, and the build record
    assert info["preset"] == "exact" and info["codec"] == {"name": "float16"} and info["pool"] == 1
    assert info["fde index"] == {"type": "flat", "quantize": None} and info["candidates"] == 100 and info["rerank"] is True
    assert info["txtai"] == importlib.metadata.version("txtai") and info["txtai-muvera"] == txtai_muvera.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["created"]), info["created"]

    # Where the bytes go, part by part, largest first
    parts = info["bytes by part"]
    assert sum(parts.values()) == info["bytes on disk"] and "documents" in parts and any(x.startswith("scoring/") for x in parts)
    assert list(parts.values()) == sorted(parts.values(), reverse=True)

    # Text: every value known, sizes for people
    assert main(["info", str(index)]) == 0
    text = described(capsys.readouterr().out)
    assert text["preset"] == "exact" and text["codec"] == "float16" and text["fde index"] == "flat" and text["candidates"] == "100"
    assert text["fde dims"] == "256 (4 x 2^3 x 8)" and text["created"] == info["created"] and text["size"].endswith(" kB")


def described(output):
    """
    Parses info's text output into {entry: value}, checking that no value is None.
    """

    lines = {}
    for line in output.splitlines():
        # "key  value", parts of the size indented under it
        key, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        lines[("  " if line.startswith("  ") else "") + key] = value

    assert "None" not in output.split(), output
    return lines


def test_info_compact(checkpoint, corpus, tmp_path, capsys, monkeypatch):
    # The package default preset, built by the command line and by txtai's Embeddings
    monkeypatch.setenv("TXTAI_MUVERA_PRESET", "compact")
    assert main(["index", str(corpus), str(tmp_path / "cli"), "--model", checkpoint, "--quiet"]) == 0

    embeddings = Embeddings(sparse=checkpoint, content=True)
    embeddings.index([{"id": f"d{i}", "text": text} for i, text in enumerate(TEXTS)])
    embeddings.save(str(tmp_path / "api"))
    embeddings.close()

    for name in ("cli", "api"):
        capsys.readouterr()
        assert main(["info", str(tmp_path / name), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["preset"] == "compact" and info["pool"] == 2 and info["candidates"] == 1000
        assert info["codec"]["name"] == "adaptive" and info["codec"]["bits"] == 2.5 and info["codec"]["centroids"] >= 1
        assert info["fde index"] == {"type": "fastscan", "quantize": "sq8", "first stage": False} and info["fde dims"] == 2048

        assert main(["info", str(tmp_path / name)]) == 0
        text = described(capsys.readouterr().out)
        assert text["codec"] == f"adaptive, 2.5 bits, {info['codec']['centroids']} centroids" and text["fde index"] == "fastscan + sq8"
        assert text["fde dims"] == "2,048 (20 x 2^5 x 16 = 10,240, count-sketched)" and text["pool"] == "2"

        # The index records its build, whether the command line or txtai's Embeddings built it
        assert info["txtai"] == importlib.metadata.version("txtai") and text["created"] == info["created"]
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", info["created"]), info["created"]


def test_info_legacy(fixtures, tmp_path, capsys):
    # An index saved by 0.1.0: no preset or pooling recorded (its settings are the exact preset's), its build recorded by txtai
    shutil.copytree(fixtures / "index-0.1.0" / "index", tmp_path / "index")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "index"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "exact" and info["pool"] == 1 and info["codec"] == {"name": "float16"} and info["candidates"] == 100
    assert info["txtai-muvera"] == "0.1.0" and info["txtai"] == "9.14.0" and info["created"] == "2026-11-29T20:16:26Z"

    assert main(["info", str(tmp_path / "index")]) == 0
    described(capsys.readouterr().out)


def test_index_options(checkpoint, corpus, tmp_path, capsys):
    output = tmp_path / "index"
    args = ["index", str(corpus), str(output), "--model", checkpoint, "--quiet", *MUVERA]
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--tokens", "int8", "--ann", "hnsw", "--candidates", "7", "--no-rerank", "--threads", "1", "--half"]) == 0
    finally:
        # torch's thread count is process wide
        torch.set_num_threads(threads)
    summary = capsys.readouterr().out
    assert f"Indexed {len(TEXTS)} documents" in summary and " kB on disk" in summary

    with open(output / "config.json", encoding="utf-8") as f:
        scoring = json.load(f)["scoring"]
    assert scoring["tokens"] == "int8" and scoring["ann"]["type"] == "hnsw" and scoring["candidates"] == 7 and scoring["rerank"] is False
    assert scoring["vectors"]["threads"] == 1 and scoring["vectors"]["half"] is True

    # An existing index is only replaced with --overwrite
    error(capsys, args, "--overwrite", str(output))
    assert main([*args, "--overwrite"]) == 0
    with open(output / "config.json", encoding="utf-8") as f:
        scoring = json.load(f)["scoring"]
    assert scoring["tokens"] == "float16" and "half" not in scoring["vectors"]
    assert sorted(x for x in os.listdir(tmp_path) if not x.endswith(".lock")) == ["index"]

    # A folder that holds something else is never touched
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x", encoding="utf-8")
    error(capsys, ["index", str(corpus), str(other), "--model", checkpoint], "not empty", str(other))


def test_csv_and_folder(checkpoint, tmp_path, capsys):
    csvfile = tmp_path / "docs.csv"
    csvfile.write_text('id,title,text,year\na,First,"music, history and travel",1999\nb,,"compact vectors\non disk",2001\n', encoding="utf-8")
    assert main(["index", str(csvfile), str(tmp_path / "csv"), "--model", checkpoint, "--quiet", *MUVERA]) == 0
    results = search(capsys, str(tmp_path / "csv"), "music", "--limit", "2")[0]["results"]
    assert {row["id"] for row in results} == {"a", "b"}
    assert {row["text"] for row in results} == {"First\nmusic, history and travel", "compact vectors\non disk"}

    tsvfile = tmp_path / "docs.tsv"
    tsvfile.write_text("text\tgroup\nmusic and travel\t1\nscience questions\t2\n", encoding="utf-8")
    assert main(["index", str(tsvfile), str(tmp_path / "tsv"), "--model", checkpoint, "--quiet", *MUVERA]) == 0

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(TEXTS[0], encoding="utf-8")
    (folder / "sub" / "b.md").write_text(TEXTS[5], encoding="utf-8")
    (folder / "ignored.json").write_text("{}", encoding="utf-8")
    assert main(["index", str(folder), str(tmp_path / "folderindex"), "--model", checkpoint, "--quiet", *MUVERA]) == 0
    results = search(capsys, str(tmp_path / "folderindex"), "music history", "--limit", "5")[0]["results"]
    assert sorted(row["id"] for row in results) == ["a.txt", "sub/b.md"]
    assert results[0]["id"] == "sub/b.md"


@pytest.mark.parametrize(
    "name, content, parts",
    [
        ("bad.jsonl", '{"text": "fine"}\n{"text": "broken"\n', ["bad.jsonl:2", "invalid JSON"]),
        ("list.jsonl", '{"text": "fine"}\n\n["text"]\n', ["list.jsonl:3", "JSON object"]),
        ("notext.jsonl", '{"text": "fine"}\n{"body": "x"}\n', ["notext.jsonl:2", "'text'"]),
        ("number.jsonl", '{"text": 5}\n', ["number.jsonl:1", "'text' must be a string"]),
        ("blank.jsonl", '{"text": "fine"}\n{"text": "  "}\n', ["blank.jsonl:2", "empty text"]),
        ("badid.jsonl", '{"id": [1], "text": "fine"}\n', ["badid.jsonl:1", "'id'"]),
        (
            "dup.jsonl",
            '{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n',
            ["dup.jsonl:3", "duplicate id 'a'", "dup.jsonl:1"],
        ),
        ("empty.jsonl", "\n\n", ["No documents", "empty.jsonl"]),
        ("latin1.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n', ["latin1.jsonl:2", "UTF-8"]),
        ("nocolumn.csv", "id,body\n1,x\n", ["nocolumn.csv:1", "'text' column"]),
        ("extra.csv", "id,text\n1,x\n2,y,z\n", ["extra.csv:3", "more fields"]),
        ("short.csv", "id,text,year\n1,x,2000\n2,y\n", ["short.csv:3", "fewer fields"]),
        ("empty.csv", "", ["No documents", "empty.csv"]),
        ("header.csv", "id,text\n", ["No documents", "header.csv"]),
        ("docs.xml", "<docs/>", ["Unknown input format", "docs.xml"]),
    ],
)
def test_bad_inputs(checkpoint, tmp_path, capsys, name, content, parts):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")

    error(capsys, ["index", str(path), str(tmp_path / "out"), "--model", checkpoint], *parts)

    # Nothing was written
    assert not (tmp_path / "out").exists()


def test_bad_folder(checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    error(capsys, ["index", str(empty), str(tmp_path / "out"), "--model", checkpoint], "No documents", str(empty))

    (empty / "bad.txt").write_bytes(b"caf\xe9")
    error(capsys, ["index", str(empty), str(tmp_path / "out"), "--model", checkpoint], "bad.txt", "UTF-8")


def test_special_files(checkpoint, tmp_path, capsys):
    # A FIFO named *.txt fails at once, naming it (reading it would block for ever)
    folder = tmp_path / "fifo"
    folder.mkdir()
    (folder / "a.txt").write_text("music", encoding="utf-8")
    os.mkfifo(folder / "pipe.txt")

    outcome = []
    command = ["index", str(folder), str(tmp_path / "out"), "--model", checkpoint]
    thread = threading.Thread(target=lambda: outcome.append(error(capsys, command, "pipe.txt", "FIFO")))
    thread.start()
    thread.join(60)
    if thread.is_alive():
        # Unblock the reader so the test ends
        os.close(os.open(folder / "pipe.txt", os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
    assert outcome, "index blocked on the FIFO"

    # A file name that is not UTF-8 fails during validation, before the model loads (the model here does not exist), naming it
    names = tmp_path / "names"
    names.mkdir()
    (names / "a.txt").write_text("music", encoding="utf-8")
    with open(os.path.join(os.fsencode(names), b"caf\xe9.txt"), "wb") as f:
        f.write(b"history")
    error(capsys, ["index", str(names), str(tmp_path / "out"), "--model", str(tmp_path / "nomodel")], "caf\\udce9.txt", "not UTF-8")

    # JSON escapes that spell a lone surrogate: the row is named during validation
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"text": "fine"}\n{"text": "caf\\udce9"}\n', encoding="utf-8")
    error(capsys, ["index", str(surrogate), str(tmp_path / "out"), "--model", str(tmp_path / "nomodel")], "surrogate.jsonl:2", "lone surrogate")
    assert not (tmp_path / "out").exists()


def test_interrupted_save(index, tmp_path, capsys):
    # What a crash between the two renames of a save leaves: the previous save aside, nothing at the path. info and search
    # put it back, as durable.load does
    shutil.copytree(index, tmp_path / ".copy.old-0123")
    os.makedirs(tmp_path / ".copy.saving-4567")
    path = str(tmp_path / "copy")

    assert main(["info", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == len(TEXTS)
    assert sorted(x for x in os.listdir(tmp_path) if not x.endswith(".lock")) == ["copy"]

    os.rename(path, tmp_path / ".copy.old-89ab")
    assert len(search(capsys, path, "music history", "--limit", "3")[0]["results"]) == 3
    assert sorted(x for x in os.listdir(tmp_path) if not x.endswith(".lock")) == ["copy"]


def test_errors(checkpoint, corpus, index, tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    error(capsys, ["index", str(missing), str(tmp_path / "out"), "--model", checkpoint], "not found", str(missing))
    error(capsys, ["index", str(corpus), str(tmp_path / "out"), "--model", str(tmp_path / "nomodel")], str(tmp_path / "nomodel"))

    error(capsys, ["search", str(tmp_path / "noindex"), "query"], "not found", str(tmp_path / "noindex"))
    error(capsys, ["info", str(tmp_path)], "config.json", str(tmp_path))
    error(capsys, ["search", str(index)], "--queries")
    error(capsys, ["search", str(index), "--queries", str(missing)], str(missing))

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    error(capsys, ["search", str(index), "--queries", str(empty)], "No queries", str(empty))

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"query": "x"}\n', encoding="utf-8")
    error(capsys, ["search", str(index), "--queries", str(bad)], f"{bad}:2")

    # Argument errors: argparse's own message, status 2
    assert main(["search", str(index), "q", "--candidates", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["nocommand"]) == 2


def test_standin(tmp_path, capsys, monkeypatch):
    # The builder's logic on a tiny backbone standing in for the packaged all-MiniLM-L6-v2 (real weights are for benchmarks only)
    backbone = build_pylate_checkpoint(tmp_path / "backbone", head=False)
    (tmp_path / "backbone" / "special_tokens_map.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(standin, "source", lambda: backbone)

    output = tmp_path / "standin"
    assert main(["standin", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    assert (output / "1_Dense" / "config.json").is_file() and (output / "modules.json").is_file()

    # Identity head: the stand-in's token vectors are the backbone's own, and txtai's rule sees a late-interaction checkpoint
    model = ColBERT(str(output))
    assert model.dim == 32 and islateinteraction(str(output))
    texts = ["music history and travel", "questions about science"]
    for ours, plain in zip(model.encode(texts, "data"), ColBERT(backbone, **STANDIN).encode(texts, "data")):
        assert np.allclose(ours, plain, atol=1e-6)


def test_evaluate_wired(capsys):
    present = importlib.util.find_spec("txtai_muvera.tools.evaluation.cli") is not None
    capsys.readouterr()
    assert main(["--help"]) == 0
    assert ("evaluate" in capsys.readouterr().out) == present
    if present:
        assert main(["evaluate", "--help"]) == 0
        assert "BEIR" in capsys.readouterr().out
        error(capsys, ["evaluate", "/nonexistent/beir-folder"], "/nonexistent/beir-folder")


def test_subprocess(index, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "txtai_muvera.tools.cli"]
    output = subprocess.run([*command, "info", str(index)], capture_output=True, text=True, check=False, env=env)
    assert output.returncode == 0 and "documents" in output.stdout, output.stderr

    output = subprocess.run([*command, "search", str(tmp_path / "none"), "q"], capture_output=True, text=True, check=False, env=env)
    assert output.returncode == 2 and len(output.stderr.strip().splitlines()) == 1 and "Traceback" not in output.stderr
