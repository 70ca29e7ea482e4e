"""
Failed writes lose nothing: index, upsert and delete that raise leave the instance as it was, in the same process, through
txtai's own calls and through the `transaction` helpers, on every storage engine and content database (`store` fixture: faiss
files or pgvector, each with SQLite or PostgreSQL content)
"""

import sqlite3
import threading
import uuid

from contextlib import contextmanager

import numpy as np
import pytest

from txtai import Embeddings

from txtai_muvera import ColBERT, durable, transaction

from checkpoints import build_pylate_checkpoint
from conftest import Engine, pgurl

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}

QUERIES = ["music history science", "weather sports food", "token vector search"]


def corpus(size, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 8))) for _ in range(size)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=16)


class Store(Engine):
    """
    A storage engine and a content database: faiss or pgvector, with SQLite (content=True) or PostgreSQL content.
    """

    def __init__(self, name, content, url=None):
        super().__init__("pgvector" if "pgvector" in (name, content) or content == "postgresql" else "faiss", url)
        self.engine, self.content = name, content

    def config(self, sparse, **kwargs):
        sparse = {**sparse, "backend": self.engine}
        if self.engine == "pgvector":
            sparse["pgvector"] = {"url": self.database, "table": f"t_{uuid.uuid4().hex[:12]}"}
        content = self.database.replace("+psycopg2://", "+psycopg://") if self.content == "postgresql" else True
        return {"sparse": sparse, "content": content, **kwargs}


# Storage engine, content database and write calls of each run: txtai's own calls on every combination, the helpers (the same
# functions, called directly) on the two usual ones
SETUPS = [
    ("faiss", "sqlite", "plain"),
    ("faiss", "postgresql", "plain"),
    ("pgvector", "postgresql", "plain"),
    ("pgvector", "sqlite", "plain"),
    ("faiss", "sqlite", "helper"),
    ("pgvector", "postgresql", "helper"),
]


@pytest.fixture(params=SETUPS, ids="-".join)
def engine(request):
    """
    Storage engine and content database of a test; those that need PostgreSQL run against the server named by
    TXTAI_MUVERA_PG_URL (skipped without it, except under CI).
    """

    name, content, calls = request.param
    url = pgurl() if "postgresql" in request.param or name == "pgvector" else None
    instance = Store(name, content, url)
    instance.calls = Plain if calls == "plain" else transaction
    try:
        yield instance
    finally:
        instance.close()


class Plain:
    """
    txtai's own write calls (run as transactions once the package is registered).
    """

    @staticmethod
    def index(embeddings, documents):
        embeddings.index(documents)

    @staticmethod
    def upsert(embeddings, documents):
        embeddings.upsert(documents)

    @staticmethod
    def delete(embeddings, ids):
        return embeddings.delete(ids)


@pytest.fixture
def calls(engine):
    """
    How a test writes: txtai's own calls, or the `transaction` helpers.
    """

    return engine.calls


# txtai's batch size: documents reach the database and the scoring index in batches of this size (1,024 by default; smaller
# here so that "past one batch" and "past five batches", where txtai's own encoding queue of 5 batches used to block, stay fast)
BATCH = 128


def create(engine, checkpoint, documents=300, **settings):
    embeddings = Embeddings(engine.config({"path": checkpoint, "muvera": dict(MUVERA), "candidates": 1000, **settings}, batch=BATCH))
    embeddings.index([(f"d{i}", text, None) for i, text in enumerate(corpus(documents))])
    return embeddings


def state(embeddings):
    """
    Everything a user can observe: count, ranked results with scores, and every content row.
    """

    rows = embeddings.search("select id, text from txtai order by id limit 100000")
    return embeddings.count(), embeddings.batchsearch(QUERIES, 10), sorted((row["id"], row["text"]) for row in rows)


def aligned(embeddings, checkpoint, sample=25):
    """
    Checks that the late-interaction index and the document database agree on every index id: each stored token matrix is
    the encoding of the database text under the same index id.
    """

    embeddings.scoring.count()
    rows = sorted((row["indexid"], row["text"]) for row in embeddings.search("select indexid, text from txtai limit 100000"))
    stored = embeddings.scoring.storage.ids()
    assert sorted(stored.tolist()) == [indexid for indexid, _ in rows]
    assert embeddings.scoring.storage.count() == len(rows)

    model = ColBERT(checkpoint)
    for indexid, text in [rows[x] for x in np.linspace(0, len(rows) - 1, min(sample, len(rows))).astype(int)]:
        tokens, offsets, _ = embeddings.scoring.storage.gather([indexid])
        assert np.allclose(tokens.astype(np.float32), model.encode([text], "data")[0], atol=2e-3)


def documents(size, bad, seed=1, replace=50):
    """
    New documents, the first `replace` of which replace existing ids, with one bad document at position `bad`.
    """

    batch = [(f"d{i}" if i < replace else f"n{i}", text, None) for i, text in enumerate(corpus(size, seed))]
    batch[bad] = (batch[bad][0], {"text": 42}, None)
    return batch


@pytest.mark.parametrize("bad", [0, BATCH + 6, 5 * BATCH + 10])
def test_failed_upsert(engine, checkpoint, bad, calls):
    embeddings = create(engine, checkpoint)
    before = state(embeddings)

    with pytest.raises(TypeError, match="has int text"):
        calls.upsert(embeddings, documents(bad + 20, bad))

    # Replaced and existing documents are all still there: same results, same scores, same content rows
    assert state(embeddings) == before
    aligned(embeddings, checkpoint)

    # Later writes line up: replaced ids are replaced, new ids are found under their own text
    calls.upsert(embeddings, [("d3", "science science token", None), ("late", "weather weather sports", None)])
    assert embeddings.count() == before[0] + 1
    assert embeddings.search("weather weather sports", 1)[0]["id"] == "late"
    assert embeddings.search("select text from txtai where id = 'd3'")[0]["text"] == "science science token"
    aligned(embeddings, checkpoint)


class Failing:
    """
    A psycopg connection whose commit fails: every statement of the write ran, then the server refuses to commit.
    """

    def __init__(self, connection):
        self.connection = connection

    def commit(self):
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.connection, name)


def inject(embeddings, point, monkeypatch):
    """
    Makes the storage engine's next write fail at one of two points each engine has.

    faiss: "first" fails the FDE index add (after every token row is in), "later" the token store add of the second chunk of
    1,024 documents. pgvector: "first" fails turning the second chunk into rows (the deletes and the first chunk are in the
    transaction), "later" fails the commit itself (every statement ran): the engine's own commit, or with content in the same
    database the commit of the one transaction that holds content and index rows.

    Args:
        embeddings: Embeddings instance
        point: first or later
        monkeypatch: pytest monkeypatch
    """

    storage = embeddings.scoring.storage
    if hasattr(storage, "fdes"):
        target = storage.fdes if point == "first" else storage.store
        original, calls = target.add, []

        def failing(*args, **kwargs):
            calls.append(1)
            if point == "first" or len(calls) > 1:
                raise OSError(28, "No space left on device")
            return original(*args, **kwargs)

        monkeypatch.setattr(target, "add", failing)
    elif point == "first":
        original, calls = storage.rows, []

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:
                raise OSError(28, "No space left on device")
            return original(*args, **kwargs)

        monkeypatch.setattr(storage, "rows", failing)
    else:
        failcommit(embeddings, monkeypatch)


def failcommit(embeddings, monkeypatch):
    """
    Makes every commit of a pgvector engine's connections fail (see Failing), and with content in the same database every
    commit of the content session, which then holds the index rows too.

    Args:
        embeddings: Embeddings instance with a pgvector engine
        monkeypatch: pytest monkeypatch
    """

    session = getattr(embeddings.database, "dbconnection", None) and embeddings.database.connection
    if session is not None:
        monkeypatch.setattr(session, "commit", lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")))

    storage = embeddings.scoring.storage
    original = storage.connection

    @contextmanager
    def failing():
        with original() as connection:
            yield Failing(connection)

    monkeypatch.setattr(storage, "connection", failing)


@pytest.mark.parametrize("point", ["first", "later"])
def test_failed_storage_write(engine, checkpoint, point, monkeypatch, calls):
    embeddings = create(engine, checkpoint)
    before = state(embeddings)

    # Inject a failure in the storage engine's write (see inject)
    inject(embeddings, point, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        calls.upsert(embeddings, documents(1100, 1099, replace=100)[:-1])

    monkeypatch.undo()
    assert state(embeddings) == before
    aligned(embeddings, checkpoint)

    calls.upsert(embeddings, [("d7", "food food travel", None)])
    assert embeddings.search("select text from txtai where id = 'd7'")[0]["text"] == "food food travel"
    aligned(embeddings, checkpoint)


def test_failed_codec(engine, checkpoint, monkeypatch, calls):
    # Residual tokens: the trained codec fails encoding the second chunk of a write (after the first chunk's rows are in)
    embeddings = create(engine, checkpoint, tokens="residual")
    before = state(embeddings)

    storage = embeddings.scoring.storage
    codec = storage.store.codec if hasattr(storage, "store") else storage.codec
    original, encodes = codec.encode, []

    def failing(rows):
        encodes.append(1)
        if len(encodes) > 1:
            raise MemoryError("injected")
        return original(rows)

    monkeypatch.setattr(codec, "encode", failing)
    with pytest.raises(MemoryError, match="injected"):
        calls.upsert(embeddings, documents(1100, 1099, replace=100)[:-1])

    monkeypatch.undo()
    assert state(embeddings) == before
    calls.upsert(embeddings, [("d5", "travel travel weather", None)])
    assert embeddings.search("select text from txtai where id = 'd5'")[0]["text"] == "travel travel weather"
    assert embeddings.count() == before[0]


def test_failed_delete(engine, checkpoint, monkeypatch, calls):
    embeddings = create(engine, checkpoint)
    before = state(embeddings)

    # The token store's delete (faiss), or the commit of the DELETE statement (pgvector)
    storage = embeddings.scoring.storage
    if hasattr(storage, "store"):
        monkeypatch.setattr(storage.store, "delete", lambda ids: (_ for _ in ()).throw(OSError("injected")))
    else:
        failcommit(embeddings, monkeypatch)

    with pytest.raises(OSError, match="injected|No space left"):
        calls.delete(embeddings, ["d1", "d2"])

    monkeypatch.undo()
    assert state(embeddings) == before
    assert calls.delete(embeddings, ["d1"]) == ["d1"] and embeddings.count() == before[0] - 1
    assert state(embeddings)[0] == before[0] - 1


def test_failed_index_keeps_loaded_instance(engine, checkpoint, tmp_path, calls):
    embeddings = create(engine, checkpoint, 200)
    durable.save(embeddings, tmp_path / "index")
    loaded = durable.load(tmp_path / "index")
    before = state(loaded)

    # The loaded index stays, searchable and savable
    with pytest.raises(TypeError, match="has float text"):
        calls.index(loaded, [("a", "music", None), ("b", {"text": 3.5}, None)])
    assert state(loaded) == before

    # txtai's own save after the failed index writes the index as it was (200 documents, 200 content rows)
    loaded.save(str(tmp_path / "plain"))
    again = Embeddings()
    again.load(str(tmp_path / "plain"))
    assert state(again) == before
    again.close()

    # A successful index replaces it
    calls.index(loaded, [("x", "music history", None)])
    assert loaded.count() == 1 and loaded.search("music", 1)[0]["id"] == "x"
    assert len(loaded.search("select id from txtai limit 1000")) == 1


def test_failed_first_index(engine, checkpoint, calls):
    # An instance that never held an index stays empty: no content rows, no index, and the next index works
    embeddings = Embeddings(engine.config({"path": checkpoint, "muvera": dict(MUVERA)}, batch=BATCH))
    with pytest.raises(TypeError, match="has int text"):
        calls.index(embeddings, documents(BATCH + 10, BATCH + 5, replace=0))
    assert embeddings.count() == 0 and embeddings.database is None

    calls.upsert(embeddings, [("a", "music history", None), ("b", "weather sports", None)])
    assert embeddings.count() == 2 and embeddings.search("weather sports", 1)[0]["id"] == "b"
    aligned(embeddings, checkpoint)


def test_none_documents_long_call(engine, checkpoint):
    # None documents take no index id, like txtai's database: ids stay aligned in calls longer than one batch
    embeddings = create(engine, checkpoint, 10)
    batch = [(f"n{i}", text, None) for i, text in enumerate(corpus(6 * BATCH, 4))]
    for x in (5, BATCH + 3, 5 * BATCH + 1):
        batch[x] = (f"n{x}", None, None)

    embeddings.upsert(batch)
    assert embeddings.count() == 10 + 6 * BATCH - 3
    aligned(embeddings, checkpoint)

    # A later upsert lands where searches find it (every document is a candidate here, so a similar() filter on its id finds it)
    embeddings.upsert([("late", "vector vector token token", None)])
    assert [row["id"] for row in embeddings.search("select id from txtai where similar('vector token', 5000) and id = 'late'")] == ["late"]
    aligned(embeddings, checkpoint)


def test_database_failure_does_not_hang(engine, checkpoint, monkeypatch, calls):
    # A database error deep in a call larger than five batches raises promptly (no encoding thread to block) and the
    # helper restores everything
    embeddings = create(engine, checkpoint)
    before = state(embeddings)
    original, inserts = embeddings.database.insert, []

    def failing(batch, index=0):
        inserts.append(1)
        if len(inserts) == 3:
            raise sqlite3.IntegrityError("injected")
        return original(batch, index)

    monkeypatch.setattr(embeddings.database, "insert", failing)
    errors = []
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(sqlite3.IntegrityError, calls.upsert, embeddings, documents(6 * BATCH, 6 * BATCH - 1)[:-1])))
    thread.start()
    thread.join(120)
    assert not thread.is_alive() and errors

    monkeypatch.setattr(embeddings.database, "insert", original)
    assert state(embeddings) == before
    calls.upsert(embeddings, [("d9", "history history", None)])
    assert embeddings.search("select text from txtai where id = 'd9'")[0]["text"] == "history history"
    aligned(embeddings, checkpoint)


def test_positional_arguments(engine, checkpoint):
    # txtai's signatures, positionally: index(documents, reindex, checkpoint), upsert(documents, checkpoint); an upsert into an
    # empty instance runs index
    embeddings = Embeddings(engine.config({"path": checkpoint, "muvera": dict(MUVERA)}, batch=BATCH))
    embeddings.upsert([("a", "music history", None)], None)
    assert embeddings.count() == 1
    embeddings.index([("a", "music history", None), ("b", "weather sports", None)], False, None)
    embeddings.upsert([("c", "food travel", None)], None)
    assert embeddings.count() == 3 and embeddings.search("food travel", 1)[0]["id"] == "c"
