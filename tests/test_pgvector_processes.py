"""
PostgreSQL storage engine across processes, against a real PostgreSQL with pgvector (no mocks): one writer at a time (a second
is refused at once, naming the first), a reader beside a writer never sees a torn state, and a writer killed at any step of a
write leaves a table that a new process loads and writes.

The server's SQLAlchemy URL comes from TXTAI_MUVERA_PG_URL (see tests/test_pgvector.py); without it these tests skip, except
under CI where they must run. TXTAI_MUVERA_PROCESSES_SECONDS sets how long the writer of test_writers writes (default 10).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import Engine, pgurl

pgvector = pytest.importorskip("txtai_muvera.core.pgvector", reason="postgres extra not installed: pip install txtai-muvera[postgres]")

# Documents per group, FDE and token dims
SIZE, DIMENSIONS, DIM = 6, 64, 4

# Shared by every process of these tests. A group's documents share one FDE direction (a search for it finds the whole group or
# none of it) and their tokens name their id. Write w adds groups 2w and 2w + 1 and deletes group w - 1: after it the table holds
# groups w..2w+1, SIZE * (w + 2) documents.
PRELUDE = rf"""
import json, os, sys, time
import numpy as np
from txtai_muvera.core.options import SearchOptions
from txtai_muvera.core.pgvector import LeaseError, PGVectorStorage, StaleError

SIZE, DIMENSIONS, DIM = {SIZE}, {DIMENSIONS}, {DIM}

def load(url, path):
    engine = PGVectorStorage({{"pgvector": {{"url": url, "table": "shared", "index": "flat"}}}}, DIMENSIONS, DIM)
    engine.load(path)
    return engine

def direction(g):
    vector = np.random.default_rng(g).standard_normal(DIMENSIONS).astype(np.float32)
    return vector / np.linalg.norm(vector)

def group(g):
    ids = np.arange(g * SIZE, (g + 1) * SIZE, dtype=np.int64)
    return ids, np.repeat(direction(g)[None], SIZE, axis=0), [np.full((3, DIM), float(uid % 2048), dtype=np.float32) for uid in ids]

def write(engine, w):
    (a, fa, ta), (b, fb, tb) = group(2 * w), group(2 * w + 1)
    deletes = group(w - 1)[0] if w else np.zeros(0, dtype=np.int64)
    engine.apply(deletes, [(np.concatenate([a, b]), np.concatenate([fa, fb]), ta + tb)])

def wait(path):
    while not os.path.exists(path):
        time.sleep(0.01)
"""

# Once the other processes have loaded the index, writes for a number of seconds (at least two writes), creating a file after
# its first write
WRITER = PRELUDE + r"""
url, path, seconds, ready = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
engine = load(url, path)
for other in sys.argv[5:]:
    wait(other)
writes, start = 0, time.time()
while writes < 2 or time.time() - start < seconds:
    write(engine, writes)
    writes += 1
    if writes == 1:
        open(ready, "w").close()
print(json.dumps({"writes": writes, "seconds": time.time() - start}))
engine.close()
"""

# A second writer, loaded before the first writes: its write is refused while the first is open, and once the first has closed,
# refused again because the first wrote since this one loaded
SECOND = PRELUDE + r"""
url, path, loaded, ready, done = sys.argv[1:6]
engine = load(url, path)
open(loaded, "w").close()
wait(ready)
result, start = {}, time.time()
try:
    write(engine, 1000)
    result["lease"] = None
except LeaseError as error:
    result.update(lease=str(error), seconds=time.time() - start)
wait(done)
try:
    write(engine, 1000)
    result["stale"] = None
except StaleError as error:
    result["stale"] = str(error)
print(json.dumps(result))
engine.close()
"""

# Searches in a loop until a file appears. Each round: the count (whole writes only, never decreasing), a search for a group
# that was or will be written (whole or absent, every id of a group live in the search's snapshot, the tokens of each found
# id), and the stored ids (whole groups only)
READER = PRELUDE + r"""
url, path, loaded, stop = sys.argv[1:5]
engine = load(url, path)
open(loaded, "w").close()
rng = np.random.default_rng(0)
rounds, searches, last, problems = 0, 0, 0, []
while not os.path.exists(stop):
    before = engine.count()
    if before % SIZE or before < last:
        problems.append(f"count {before} after {last}")
    last = before
    for h in rng.integers(0, 2 * max(before // SIZE - 2, 0) + 4, 4).tolist():
        _, found = engine.search(direction(h)[None], SIZE, SearchOptions())
        found = found[0][found[0] >= 0]
        after = engine.count()
        common, members = set(found.tolist()) & set(group(h)[0].tolist()), set(group(h)[0].tolist())
        if common and common != members:
            problems.append(f"group {h} torn: {sorted(common)}")
        first, latest = before // SIZE - 2, after // SIZE - 2
        live = [uid for uid in found.tolist() if max(first, 0) <= uid // SIZE <= 2 * latest + 1]
        if len(live) != len(found):
            problems.append(f"ids {found.tolist()} not stored between writes {first} and {latest}")
        values, offsets, _ = engine.gather(found)
        for x, uid in enumerate(found.tolist()):
            if not (values[offsets[x]:offsets[x + 1]].astype(np.float32) == float(uid % 2048)).all():
                problems.append(f"tokens of id {uid} are another document's")
        searches += 1
    groups = np.bincount(engine.ids() // SIZE)
    if set(groups[groups > 0].tolist()) - {SIZE}:
        problems.append("partial group in ids()")
    rounds += 1
print(json.dumps({"rounds": rounds, "searches": searches, "problems": problems[:10]}))
engine.close()
"""

# Killed at one step of a write (the test's child only: the library has no such hook). The COPY is this engine's copy(); the
# commit, the first one after it, that of the write's transaction.
KILLED = PRELUDE + r"""
import signal
import psycopg

url, path, step = sys.argv[1:4]
engine = load(url, path)
armed = False

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

copy, commit = PGVectorStorage.copy, psycopg.Connection.commit

def copying(self, *args):
    global armed
    if step == "before-copy":
        kill()
    copy(self, *args)
    if step == "after-copy":
        kill()
    armed = True

def committing(self):
    if armed and step == "before-commit":
        kill()
    commit(self)
    if armed and step == "after-commit":
        kill()

PGVectorStorage.copy, psycopg.Connection.commit = copying, committing
write(engine, 2)
print("not killed")
"""


@pytest.fixture
def database():
    """
    URL of a fresh database on the test server, dropped after the test (with any session a process left).
    """

    engine = Engine("pgvector", pgurl())
    try:
        yield engine.database
    finally:
        engine.close()


def storage(url):
    """
    An engine on the shared test table.
    """

    return pgvector.PGVectorStorage({"pgvector": {"url": url, "table": "shared", "index": "flat"}}, DIMENSIONS, DIM)


def build(url, path, writes):
    """
    Creates the shared table with a number of writes, saves it and closes it.
    """

    namespace = {}
    exec(PRELUDE, namespace)  # pylint: disable=W0122
    engine = storage(url)
    engine.apply([], [])
    for w in range(writes):
        namespace["write"](engine, w)
    engine.save(str(path))
    engine.close()


def expected(writes):
    """
    Ids the table holds after a number of writes: groups w..2w+1 of the last write w.
    """

    if not writes:
        return []
    w = writes - 1
    return list(range(w * SIZE, (2 * w + 2) * SIZE))


def spawn(script, *args, **kwargs):
    """
    Starts a test process running a script.
    """

    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process, timeout):
    """
    Waits for a test process; returns its last stdout line parsed as JSON.
    """

    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def leased(url):
    """
    Server pids that hold an advisory lock on a URL's database.
    """

    import psycopg  # pylint: disable=C0415
    from sqlalchemy.engine import make_url  # pylint: disable=C0415

    parsed = make_url(url)
    with psycopg.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True) as conn:
        statement = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = %s)"
        return [row[0] for row in conn.execute(statement, (parsed.database,)).fetchall()]


def test_writers(database, tmp_path):
    """
    Two writer processes and a reader on one index: the second writer is refused at once with a LeaseError naming the first
    (not a cascade of duplicate ids), and once the first has closed, with a StaleError (the first wrote since it loaded); the
    reader searching throughout never sees a torn state; at the end no id is lost or duplicated, and a process that loads
    afresh writes.
    """

    seconds = float(os.environ.get("TXTAI_MUVERA_PROCESSES_SECONDS", "10"))
    build(database, tmp_path / "index", 0)
    ready, stop, done, reading, loaded = (tmp_path / name for name in ("ready", "stop", "done", "reading", "loaded"))

    reader = spawn(READER, database, tmp_path / "index", reading, stop)
    second = spawn(SECOND, database, tmp_path / "index", loaded, ready, done)
    writer = spawn(WRITER, database, tmp_path / "index", seconds, ready, reading, loaded)
    try:
        written = finish(writer, seconds + 300)
    finally:
        stop.touch()
        done.touch()
    searched, refused = finish(reader, 300), finish(second, 300)

    assert written["writes"] >= 2
    assert refused["lease"] and refused["seconds"] < 2
    assert "is being written by txtai-muvera writer" in refused["lease"] and f" pid {writer.pid} (server pid" in refused["lease"]
    assert "Searches need no lease" in refused["lease"]
    assert refused["stale"] and "load the index again" in refused["stale"]
    assert searched["rounds"] > 0 and searched["problems"] == []

    engine = storage(database)
    engine.load(str(tmp_path / "index"))
    ids = engine.ids().tolist()
    assert ids == expected(written["writes"]) and len(set(ids)) == len(ids) == engine.count()

    # Loaded afresh after the first writer closed: writes
    namespace = {}
    exec(PRELUDE, namespace)  # pylint: disable=W0122
    namespace["write"](engine, written["writes"])
    assert engine.ids().tolist() == expected(written["writes"] + 1)
    engine.close()

    print(
        f"{written['writes']} writes in {written['seconds']:.1f} s, second writer refused in {refused['seconds'] * 1000:.0f} ms, "
        f"reader: {searched['rounds']} rounds, {searched['searches']} searches"
    )


@pytest.mark.parametrize("step", ["before-copy", "after-copy", "before-commit", "after-commit"])
def test_killed(database, tmp_path, step):
    """
    A writer killed (SIGKILL) at a step of a write leaves a table that a new process loads with the rows of the last committed
    write, a lease the server has released, and a view that writes.
    """

    build(database, tmp_path / "index", 2)
    child = spawn(KILLED, database, tmp_path / "index", step)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, stderr[-3000:]

    # The server ends the dead writer's sessions (rolling back its open transaction) and releases its lock
    for _ in range(200):
        if not leased(database):
            break
        time.sleep(0.05)
    assert not leased(database)

    engine = storage(database)
    engine.load(str(tmp_path / "index"))
    writes = 3 if step == "after-commit" else 2
    assert engine.ids().tolist() == expected(writes) and engine.count() == SIZE * (writes + 1)

    namespace = {}
    exec(PRELUDE, namespace)  # pylint: disable=W0122
    namespace["write"](engine, writes)
    assert engine.ids().tolist() == expected(writes + 1)
    engine.close()
