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

    # Kill delays spread over whole save loops (one save takes tens of milliseconds here); tests/test_crashes.py kills at
    # each named step of a save
    states = []
    delays = [0.0, 0.037, 0.29]
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


# Lock holder child: takes the index's lock (exclusive or shared), says so, then stops itself (SIGSTOP) while holding it
HOLDER = """
import os, signal, sys
from txtai_muvera.core import files
with files.locked(sys.argv[1], shared=sys.argv[2] == "shared", timeout=0):
    print("held", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


def bounded(function, seconds=60):
    """
    Runs function in a thread and waits at most seconds for it (a lock wait that never ends fails the test instead of hanging
    it); returns its result, or raises what it raised.
    """

    import threading  # pylint: disable=C0415

    outcome = []

    def run():
        try:
            outcome.append((True, function()))
        except BaseException as error:  # pylint: disable=W0718
            outcome.append((False, error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds} s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


@pytest.mark.parametrize("holder", ["exclusive", "shared"])
def test_stopped_lock_holder(checkpoint, tmp_path, monkeypatch, holder):
    # A stopped process holding the index's lock: a load (behind a stopped saver) or a save (behind a stopped reader) gives up
    # after the timeout with an error naming the lock file, the wait and the stopped holder; once the holder is gone, both work
    from txtai_muvera.core import files  # pylint: disable=C0415

    path = str(tmp_path / "index")
    embeddings = create(checkpoint)
    embeddings.index(corpus(20, 9))
    durable.save(embeddings, path)

    child = subprocess.Popen([sys.executable, "-c", HOLDER, path, holder], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment())
    try:
        assert child.stdout.readline().strip() == b"held", child.stderr.read().decode()
        blocked = (
            (lambda **kwargs: durable.load(path, **kwargs)) if holder == "exclusive" else (lambda **kwargs: durable.save(embeddings, path, **kwargs))
        )

        start = time.monotonic()
        with pytest.raises(durable.LockTimeoutError) as error:
            bounded(lambda: blocked(timeout=1.5))
        assert 1.5 <= time.monotonic() - start < 30
        message = str(error.value)
        assert str(tmp_path / ".index.lock") in message and "waiting 1.5 s" in message and f"pid {child.pid}" in message, message
        assert "(stopped)" in message and (holder == "shared" or "took it exclusively" in message), message

        # The environment variable sets the default wait; a bad value is named
        monkeypatch.setenv(files.TIMEOUTVAR, "0.5")
        start = time.monotonic()
        with pytest.raises(durable.LockTimeoutError, match="waiting 0.5 s"):
            bounded(blocked)
        assert time.monotonic() - start < 30
        monkeypatch.setenv(files.TIMEOUTVAR, "soon")
        with pytest.raises(ValueError, match=f"{files.TIMEOUTVAR} 'soon'"):
            blocked()
        with pytest.raises(ValueError, match="timeout -1"):
            blocked(timeout=-1)
        monkeypatch.delenv(files.TIMEOUTVAR)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

    # A save that timed out left nothing behind; with the holder gone the lock is free again
    assert listing(tmp_path) == ["index"]
    durable.save(embeddings, path, timeout=5)
    assert bounded(lambda: durable.load(path, timeout=5)).count() == 20
    assert listing(tmp_path) == ["index"]


# Read-only child: loads the index at argv[1] with durable.load and describes it with the CLI's info, printing the results.
# "simulated" raises a read-only file system's error where the lock file is opened for writing, and nowhere else
READER = """
import errno, json, os, sys
from txtai_muvera import durable
from txtai_muvera.core import files
from txtai_muvera.tools.cli import main
path, mode = sys.argv[1], sys.argv[2]
if mode == "simulated":
    opener = os.open
    def refusing(file, flags, *args, **kwargs):
        if str(file).endswith(".lock") and flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), file)
        return opener(file, flags, *args, **kwargs)
    files.os.open = refusing
else:
    try:
        open(os.path.join(os.path.dirname(path), "probe"), "w")
        raise SystemExit("the folder is writable")
    except OSError as error:
        assert error.errno == errno.EROFS, error
embeddings = durable.load(path, timeout=5)
rows = embeddings.search("select id, text from txtai", 1000)
results = embeddings.search("music history travel", 5)
code = main(["info", path, "--json"])
print(json.dumps({"count": embeddings.count(), "rows": len(rows), "found": all(x["text"] for x in results), "info": code}))
"""


def namespaces():
    # Unprivileged user and mount namespaces: a read-only bind mount is then real even for root
    import shutil  # pylint: disable=C0415

    return shutil.which("unshare") and not subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], check=False).returncode


@pytest.mark.parametrize("state", ["leftovers", "nolock", "movedaside"])
def test_read_only_folder(checkpoint, tmp_path, state):
    # A read-only folder holding an index and a dead save's leftovers loads as it is, with and without a lock file; where the
    # dead save moved the index aside, the previous save is read from there. A writable load repairs it all afterwards. On a
    # real read-only bind mount where user and mount namespaces are available, else with EROFS raised where the lock file is
    # opened for writing (the OS boundary)
    mode = "mount" if namespaces() else "simulated"

    folder = tmp_path / "folder"
    path = str(folder / "index")
    embeddings = create(checkpoint)
    embeddings.index([(f"d{i}", text, None) for i, text in enumerate(corpus(20, 10))])
    durable.save(embeddings, path)
    embeddings.close()

    # Leftovers of dead saves: an unfinished save folder and a pending one
    (folder / ".index.saving-dead").mkdir()
    (folder / ".index.saving-dead" / "config.json").write_text("{", encoding="utf-8")
    (folder / ".index.pending-dead").mkdir()
    if state == "nolock":
        os.remove(folder / ".index.lock")
    if state == "movedaside":
        os.rename(path, folder / ".index.old-dead")
    before = sorted(os.listdir(folder))

    command = [sys.executable, "-c", READER, path, mode]
    if mode == "mount":
        mount = f'mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && exec "$@"'
        command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh"] + command
    result = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output == {"count": 20, "rows": 20, "found": True, "info": 0}, output
    described = json.loads(result.stdout[: result.stdout.rindex("\n{")])
    assert described["documents"] == 20 and described["index"].endswith(".index.old-dead" if state == "movedaside" else "index")
    if state == "movedaside":
        assert "reading the previous save" in result.stderr

    # Nothing was repaired or written by the read-only load
    assert sorted(os.listdir(folder)) == before

    # Writable again: the load repairs
    assert durable.load(path).count() == 20
    assert listing(folder) == ["index"]
