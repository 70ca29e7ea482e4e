"""
Durability: a save killed at any point leaves the previous index loadable, headers are checked before arrays are trusted
"""

import inspect
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from txtai import Embeddings

import txtai_muvera
from txtai_muvera import durable

from checkpoints import build_pylate_checkpoint

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}

# Child process: loads the saved index, upserts new documents, then saves to the same path again and again until killed
CHILD = """
import json, sys
from txtai_muvera import durable
path, documents = sys.argv[1], json.load(open(sys.argv[2]))
embeddings = durable.load(path)
embeddings.upsert([(f"n{i}", text, None) for i, text in enumerate(documents)])
print("ready", flush=True)
while True:
    durable.save(embeddings, path)
    print("saved", flush=True)
"""


def corpus(size, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(size)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=32)


def create(checkpoint):
    return Embeddings(sparse={"path": checkpoint, "muvera": dict(MUVERA)}, content=True)


def environment():
    tests = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(tests)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([root, tests, os.environ.get("PYTHONPATH", "")])}


def listing(folder):
    # What is in a folder, less the empty lock files saves and loads keep beside an index
    return sorted(x for x in os.listdir(folder) if not x.endswith(".lock"))


def test_sigkill_during_save(checkpoint, tmp_path):
    documents, updates, queries = corpus(40, 0), corpus(40, 1), corpus(4, 2)
    path = str(tmp_path / "index")

    embeddings = create(checkpoint)
    embeddings.index([(f"d{i}", text, None) for i, text in enumerate(documents)])
    durable.save(embeddings, path)
    before = embeddings.batchsearch(queries, 5)

    # The state the child saves: the same upsert in this process
    embeddings.upsert([(f"n{i}", text, None) for i, text in enumerate(updates)])
    after = embeddings.batchsearch(queries, 5)
    assert before != after
    embeddings.close()

    with open(tmp_path / "updates.json", "w", encoding="utf-8") as f:
        json.dump(updates, f)

    # Kill delays spread over whole save loops (one save takes tens of milliseconds here)
    states = []
    delays = [0.0, 0.013, 0.037, 0.071, 0.13, 0.29]
    for delay in delays:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, str(tmp_path / "updates.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment()
        )
        try:
            line = child.stdout.readline()
            assert line.strip() == b"ready", child.stderr.read().decode()
            if delay == delays[-1]:
                # However slow the machine, the last kill comes after at least one complete save
                assert child.stdout.readline().strip() == b"saved", child.stderr.read().decode()
            time.sleep(delay)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()

        # Whatever the kill interrupted, one complete index is loadable: the previous save or a new one
        loaded = durable.load(path)
        results = loaded.batchsearch(queries, 5)
        assert results in (before, after)
        assert loaded.count() == (40 if results == before else 80)
        assert loaded.search("select count(*) from txtai")[0]["count(*)"] == loaded.count()
        states.append(results == after)
        loaded.close()

    # The child saved at least once before one of the kills
    assert any(states)

    # Nothing is left behind next to the index once recovered
    assert listing(tmp_path) == ["index", "updates.json"]


def test_save_repoints_database(checkpoint, tmp_path):
    # A fresh index, then a loaded one, saved twice each over the same path: later writes go to the new files
    path = str(tmp_path / "index")
    documents, queries = corpus(20, 3), corpus(2, 4)
    embeddings = create(checkpoint)
    embeddings.index(documents)
    durable.save(embeddings, path)
    embeddings.upsert([("x", "music history travel", None)])
    durable.save(embeddings, path)
    embeddings.upsert([("y", "weather sports food", None)])
    durable.save(embeddings, path)
    expected = embeddings.batchsearch(queries, 5)

    loaded = durable.load(path)
    assert loaded.count() == 22 and loaded.batchsearch(queries, 5) == expected
    loaded.upsert([("z", "science token vector", None)])
    durable.save(loaded, path)
    again = durable.load(path)
    assert again.count() == 23 and {row["id"] for row in again.search("select id from txtai where id in ('x', 'y', 'z')")} == {"x", "y", "z"}


def test_archive(checkpoint, tmp_path):
    path = str(tmp_path / "index.tar.gz")
    embeddings = create(checkpoint)
    embeddings.index(corpus(20, 5))
    durable.save(embeddings, path)
    durable.save(embeddings, path)
    assert durable.load(path).count() == 20
    assert listing(tmp_path) == ["index.tar.gz"]


def test_interrupted_between_renames(checkpoint, tmp_path):
    # The state a kill between the two renames of a swap leaves: the previous save aside, nothing at path
    path = str(tmp_path / "index")
    embeddings = create(checkpoint)
    embeddings.index(corpus(20, 6))
    durable.save(embeddings, path)
    os.rename(path, str(tmp_path / ".index.old-0123"))
    os.makedirs(tmp_path / ".index.saving-4567")

    assert durable.load(path).count() == 20
    assert listing(tmp_path) == ["index"]


def test_nothing_pickled(checkpoint, tmp_path):
    # Every array file of a saved index loads without pickle; no pickle protocol header anywhere in our files
    embeddings = create(checkpoint)
    embeddings.index(corpus(20, 7))
    durable.save(embeddings, str(tmp_path / "index"))

    scoring = tmp_path / "index" / "scoring"
    files = [os.path.join(root, x) for root, _, names in os.walk(scoring) for x in names]
    assert files
    for file in files:
        if file.endswith(".npy"):
            np.load(file, allow_pickle=False)
        with open(file, "rb") as f:
            assert not f.read(2).startswith(b"\x80"), file

    # trust_remote_code is never turned on implicitly
    config = embeddings.config["scoring"]
    assert not config["vectors"].get("trust_remote_code")
    assert inspect.signature(txtai_muvera.ColBERT.__init__).parameters["trust_remote_code"].default is False


# Writer child: loads the saved index, then for `seconds` alternately upserts 10 documents and deletes them, saving after each
WRITER = """
import json, sys, time
from txtai_muvera import durable
path, seconds = sys.argv[1], float(sys.argv[2])
embeddings = durable.load(path)
print("ready", flush=True)
saves, end = 0, time.time() + seconds
while time.time() < end:
    if saves % 2:
        embeddings.delete([f"w{i}" for i in range(10)])
    else:
        embeddings.upsert([(f"w{i}", f"music history travel {i}", None) for i in range(10)])
    durable.save(embeddings, path)
    saves += 1
print(json.dumps({"saves": saves}), flush=True)
"""


def test_readers_never_break_saves(checkpoint, tmp_path):
    # One process saves in a loop while this one loads in a loop: no save fails, every load is one whole save (index count
    # equals database rows, 40 or 50) and nothing is left next to the index afterwards
    path = str(tmp_path / "index")
    embeddings = create(checkpoint)
    embeddings.index([(f"d{i}", text, None) for i, text in enumerate(corpus(40, 8))])
    durable.save(embeddings, path)
    embeddings.close()

    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment())
    try:
        assert writer.stdout.readline().strip() == b"ready", writer.stderr.read().decode()
        counts, errors = [], []
        while writer.poll() is None:
            try:
                loaded = durable.load(path)
                rows = loaded.search("select count(*) from txtai")[0]["count(*)"]
                counts.append((loaded.count(), rows))
                loaded.search("music history", 3)
                loaded.close()
            except Exception as error:  # pylint: disable=W0718
                errors.append(repr(error))
        output, stderr = writer.communicate()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()

    assert writer.returncode == 0, stderr.decode()[-3000:]
    assert json.loads(output.decode().strip().splitlines()[-1])["saves"] > 2
    assert not errors, errors[:3]
    assert counts and all(count == rows and count in (40, 50) for count, rows in counts), counts
    final = durable.load(path)
    assert final.count() == final.search("select count(*) from txtai")[0]["count(*)"]
    assert listing(tmp_path) == ["index"]


def test_dead_pending_save_removed(tmp_path):
    # A saver killed between creating its save folder and renaming it leaves an unlocked `.<name>.pending-<id>`: restore removes
    # it, while a pending folder that a live process holds stays
    from txtai_muvera.core import files  # pylint: disable=C0415

    (tmp_path / "index").mkdir()
    dead, held = tmp_path / ".index.pending-dead", tmp_path / ".index.pending-held"
    dead.mkdir()
    held.mkdir()
    descriptor = files.hold(str(held))
    try:
        assert files.leftovers(str(tmp_path / "index"))
        files.restore(str(tmp_path / "index"))
        assert not dead.exists() and held.exists()
    finally:
        os.close(descriptor)

    files.restore(str(tmp_path / "index"))
    assert sorted(os.listdir(tmp_path)) == ["index"]
