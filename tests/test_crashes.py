"""
Crashes: a writer killed (SIGKILL) at each step of an upsert and of a save leaves an index that a new process loads whole
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from txtai import Embeddings

from txtai_muvera import durable

from checkpoints import build_pylate_checkpoint

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}

# Writer child: loads the index, upserts (new ids and replaced ones), saves, with SIGKILL at one step. Kill points are set here,
# in the child, by wrapping the named function: the library has none. argv: index path, step, save ("durable" or "txtai"),
# updates JSON
WRITER = """
import json, os, signal, sys

from txtai import Embeddings

from txtai_muvera import durable
from txtai_muvera.core import files
from txtai_muvera.core.ann import FDEIndex
from txtai_muvera.core.models.colbert import ColBERT
from txtai_muvera.core.store import TokenStore
from txtai_muvera.glue.scoring import MuveraScoring

path, step, save, updates = sys.argv[1], sys.argv[2], sys.argv[3], json.load(open(sys.argv[4]))

# The folder whose swap the "renames" and "swapped" steps interrupt: the index (durable) or its scoring folder (txtai's save)
swapped = path if save == "durable" else os.path.join(path, "scoring")


def kill(owner, name, when, condition=lambda *args, **kwargs: True):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if when == "entry" and condition(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if when == "exit" and condition(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)


embeddings = durable.load(path) if save == "durable" else Embeddings().load(path)

points = {
    "encoding": (ColBERT, "encode", "entry", lambda self, texts, category="data", batch=None: category == "data"),
    "committed": (MuveraScoring, "upsert", "exit"),
    "scoring": (MuveraScoring, "save", "entry"),
    "tokens": (TokenStore, "save", "exit"),
    "fdes": (FDEIndex, "save", "exit"),
    "renames": (os, "rename", "exit", lambda source, target, **kwargs: os.path.abspath(source) == swapped),
    "swapped": (durable if save == "durable" else files, "replacedir", "exit", lambda temp, target: os.path.abspath(target) == swapped),
}
kill(*points[step])

embeddings.upsert([(uid, text, None) for uid, text in updates.items()])
if save == "durable":
    durable.save(embeddings, path)
else:
    embeddings.save(path)
print("not killed", flush=True)
"""

STEPS = ["encoding", "committed", "scoring", "tokens", "fdes", "renames", "swapped"]


def corpus(size, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(size)]


def environment():
    tests = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([root, tests, os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """
    A saved index of 30 documents, the content before (30 documents) and after the child's upsert (10 replaced, 15 new), and
    the updates file. Each test copies the index.
    """

    folder = tmp_path_factory.mktemp("crashes")
    checkpoint = build_pylate_checkpoint(folder / "colbert", hidden=32, dim=16, document_length=32)
    before = {f"d{i}": text for i, text in enumerate(corpus(30, 0))}
    updates = {**{f"d{i}": f"replaced {text}" for i, text in enumerate(corpus(10, 1))}, **{f"n{i}": text for i, text in enumerate(corpus(15, 2))}}

    embeddings = Embeddings(sparse={"path": checkpoint, "muvera": dict(MUVERA)}, content=True)
    embeddings.index([(uid, text, None) for uid, text in before.items()])
    durable.save(embeddings, str(folder / "index"))
    embeddings.close()

    with open(folder / "updates.json", "w", encoding="utf-8") as f:
        json.dump(updates, f)

    return {"index": str(folder / "index"), "updates": str(folder / "updates.json"), "before": before, "after": {**before, **updates}}


def crash(base, tmp_path, step, save):
    """
    Copies the base index, runs the writer child killed at step and returns the index path.
    """

    path = str(tmp_path / "index")
    shutil.copytree(base["index"], path)
    child = subprocess.run(
        [sys.executable, "-c", WRITER, path, step, save, base["updates"]], capture_output=True, env=environment(), timeout=600, check=False
    )
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout.decode(), child.stderr.decode()[-3000:])
    return path


def inspect(path):
    """
    Loads the index with durable.load and reads it every way: index count, database rows, the scoring header's document count,
    the content and what searches return.

    Returns:
        dict
    """

    embeddings = durable.load(path)
    try:
        content = {row["id"]: row["text"] for row in embeddings.search("select id, text from txtai", 1000)}
        with open(os.path.join(path, "scoring", "header.json"), encoding="utf-8") as f:
            header = json.load(f)["documents"]

        # Every result of a search is a stored document: as many as asked for, each with its stored text
        searches = []
        for query in corpus(5, 3) + ["music history", "weather sports travel"]:
            results = embeddings.search(query, 10)
            searches.append(len(results) == min(10, len(content)) and all(content.get(x["id"]) == x["text"] for x in results))

        return {"count": embeddings.count(), "rows": len(content), "header": header, "content": content, "searches": all(searches)}
    finally:
        embeddings.close()


def listing(folder):
    return sorted(x for x in os.listdir(folder) if not x.endswith(".lock"))


@pytest.mark.parametrize("step", STEPS)
def test_durable_crash(base, tmp_path, step):
    # Killed anywhere before the swap: the previous save; after it: the new one. Whole either way, nothing left beside it, and
    # the next upsert and save work
    path = crash(base, tmp_path, step, "durable")
    state = inspect(path)
    expected = base["after"] if step == "swapped" else base["before"]
    assert state["count"] == state["rows"] == state["header"] == len(expected), state
    assert state["content"] == expected and state["searches"]
    assert listing(tmp_path) == ["index"]

    embeddings = durable.load(path)
    embeddings.upsert([("x", "music history travel", None), ("d0", "weather sports", None)])
    durable.save(embeddings, path)
    embeddings.close()
    state = inspect(path)
    assert state["count"] == state["rows"] == state["header"] == len(expected) + 1 and state["searches"]
    assert state["content"] == {**expected, "x": "music history travel", "d0": "weather sports"}


@pytest.mark.parametrize("step", ["committed", "scoring", "renames", "swapped"])
def test_txtai_save_crash(base, tmp_path, step):
    # The same kills under txtai's own Embeddings.save, which writes config.json and the document database in place, then the
    # scoring folder (swapped by MuveraScoring). Killed before the save (encoding, committed): the previous save (SQLite rolls
    # back what the upsert wrote into the database file). Killed while the scoring folder is written or swapped: the new
    # database (45 rows) beside the previous scoring folder (30 documents), which loads all the same: the 15 new documents
    # cannot be found and searches return index ids whose rows the upsert replaced. Killed after the scoring swap: the new
    # save, whole
    path = crash(base, tmp_path, step, "txtai")
    state = inspect(path)

    before, after = base["before"], base["after"]
    if step in ("encoding", "committed"):
        assert state["count"] == state["rows"] == state["header"] == len(before) and state["content"] == before and state["searches"]
    elif step == "swapped":
        assert state["count"] == state["rows"] == state["header"] == len(after) and state["content"] == after and state["searches"]
    else:
        assert state["content"] == after and state["count"] == state["header"] == len(before) != state["rows"] and not state["searches"], state
