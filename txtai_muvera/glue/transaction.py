"""
Transaction module: index, upsert and delete an Embeddings instance so that a call that raises leaves it exactly as it was

Once the package is registered, txtai's own `Embeddings.index`, `upsert` and `delete` of a late-interaction instance run
through these functions (see `registry`), so plain txtai calls, YAML workflows and txtai's API get the same guarantee; calling
them directly stays supported.

Why the write calls and not only the content database: txtai's `Embeddings.index` closes the instance's database and scoring
index before it reads the first document, and writes its id offset into the instance config before the scoring index commits;
`Embeddings.delete` never commits a sparse index. Neither a database nor a scoring class can reach the instance's config or
the previous database, so only a wrapper of the call can restore them (docs/reliability.md, "Failed writes").

The late-interaction index is restored by MuveraScoring itself (staged writes, all-or-nothing commits), the document database
(SQLite, or txtai's SQLAlchemy client database, e.g. PostgreSQL) by a savepoint or a transaction, the index offsets from a
copy.
"""

import copy
import logging
import threading
import uuid

from contextlib import contextmanager, nullcontext

import numpy as np

logger = logging.getLogger(__name__)

# Top-level config keys txtai's writes change
KEYS = ("offset", "autoid", "dimensions")

# Write calls running in each thread: calls made inside one (txtai's upsert deletes through Embeddings.delete) go to txtai
LOCAL = threading.local()


def active():
    """
    Returns:
        True while the calling thread runs a transaction of this module
    """

    return getattr(LOCAL, "depth", 0) > 0


@contextmanager
def inside():
    """
    Marks the calling thread as running a transaction, for the duration of the block.
    """

    LOCAL.depth = getattr(LOCAL, "depth", 0) + 1
    try:
        yield
    finally:
        LOCAL.depth -= 1


def index(embeddings, documents, *args, **kwargs):
    """
    Builds a new index from documents, replacing the instance's index only when the build succeeds. txtai's index() replaces
    the database and the scoring index before it reads the first document, so the build runs in a new instance with the same
    configuration and is swapped in at the end (both indexes are held in memory until then).

    Args:
        embeddings: Embeddings instance
        documents: iterable of documents, as for Embeddings.index
        args: further positional arguments for Embeddings.index
        kwargs: further keyword arguments for Embeddings.index

    Returns:
        embeddings
    """

    with inside():
        config = copy.deepcopy(embeddings.config) if embeddings.config else None
        for key in ("offset", "autoid"):
            if config:
                config.pop(key, None)

        # A client database (PostgreSQL) is shared with the new instance, which builds on a connection of its own: the open
        # transaction of this instance is settled first, or the build would wait forever on its row locks
        database = embeddings.database
        if clientsession(database) is not None:
            ready(database)

        fresh = type(embeddings)(config, models=embeddings.models)
        try:
            with joined(fresh):
                fresh.index(documents, *args, **kwargs)
            if pgconfig(fresh.config):
                commit(fresh.database)
        except BaseException:
            fresh.close()
            raise

        # Swap: the old instance's resources are released, then it takes over the new one's state
        embeddings.close()
        embeddings.__dict__.update(fresh.__dict__)

    return embeddings


def upsert(embeddings, documents, *args, **kwargs):
    """
    Upserts documents; a call that raises leaves the instance as it was (index, content rows, offsets).

    Args:
        embeddings: Embeddings instance
        documents: iterable of documents, as for Embeddings.upsert
        args: further positional arguments for Embeddings.upsert
        kwargs: further keyword arguments for Embeddings.upsert

    Returns:
        embeddings
    """

    with inside():
        # txtai runs a full index() when the instance is empty: that path replaces everything, so build and swap instead
        if not embeddings.count():
            # txtai's upsert takes (documents, checkpoint); its index takes (documents, reindex, checkpoint)
            return index(embeddings, documents, **({"checkpoint": args[0]} if args else {}), **kwargs)

        with transaction(embeddings):
            embeddings.upsert(documents, *args, **kwargs)

    return embeddings


def delete(embeddings, ids):
    """
    Deletes ids; a call that raises leaves the instance as it was.

    Args:
        embeddings: Embeddings instance
        ids: ids to delete

    Returns:
        list of ids deleted
    """

    with inside():
        with transaction(embeddings):
            deleted = embeddings.delete(ids)

            # Commit the staged deletes of the late-interaction index inside the transaction, so a failure there rolls back too
            if hasattr(embeddings.scoring, "settle"):
                embeddings.scoring.settle()

    return deleted


@contextmanager
def transaction(embeddings):
    """
    Runs a block of txtai writes on one instance; if the block raises, the late-interaction index, the document database and
    the index offsets are restored before the error propagates.

    The document database is rolled back to a savepoint (txtai's SQLite database, its default) or runs the block as one
    transaction, committed at its end (txtai's client database, `content: postgresql://...`: the server is the source of truth,
    so each successful write call is durable at once and a crashed process leaves nothing half written). Content rows and the
    rows of a pgvector index in the same database commit together (`joined`). Other databases raise before anything is written.
    A dense ANN index of a hybrid instance is not restored (txtai's faiss index has no undo): see docs/reliability.md.

    Args:
        embeddings: Embeddings instance
    """

    database = embeddings.database
    session = clientsession(database)
    if database is not None and session is None and not hasattr(getattr(database, "connection", None), "in_transaction"):
        raise NotImplementedError(
            f"Transactions need txtai's SQLite or client (SQLAlchemy) content database, this instance uses {type(database).__name__}"
        )

    # Content in the same database as a pgvector index commits with every write call: the server is the source of truth. With
    # an index in files, content rows commit when the index is saved (txtai's own rule), so both stay at the same point
    durable = session is not None and pgconfig(embeddings.config)

    with inside():
        if durable:
            # Earlier work settled and the connection alive, so that the block is a transaction of its own
            ready(database)
            align(embeddings)
        elif session is not None and hasattr(database, "ping"):
            database.ping()

        # Apply deletes staged by earlier calls, so the rollback below undoes exactly this block
        scoring = embeddings.scoring if hasattr(embeddings.scoring, "rollback") else None
        if scoring:
            scoring.settle()

        saved = {key: copy.deepcopy(embeddings.config.get(key)) for key in KEYS if key in embeddings.config}
        ids = copy.copy(embeddings.ids) if getattr(embeddings, "ids", None) is not None else None
        name = f"txtai_muvera_{uuid.uuid4().hex}"

        cursor, nested = None, None
        if session is not None and not durable:
            # SAVEPOINT inside the session's transaction (begun here when none is open); pending ORM rows are flushed first
            nested = session.begin_nested()
        elif session is None and database is not None and database.connection is not None:
            cursor = database.connection.cursor()

            # An explicit transaction first: releasing an outermost savepoint would commit into the database file
            if not database.connection.in_transaction:
                cursor.execute("BEGIN")
            cursor.execute(f"SAVEPOINT {name}")

        try:
            with joined(embeddings):
                yield
            if durable:
                commit(database)
            elif nested is not None and nested.is_active:
                nested.commit()
                database.pending = True
        except BaseException:
            if durable:
                rollback(database)
            elif nested is not None and nested.is_active:
                nested.rollback()
            if cursor is not None:
                cursor.execute(f"ROLLBACK TO SAVEPOINT {name}")
                cursor.execute(f"RELEASE SAVEPOINT {name}")
            if scoring:
                scoring.rollback()
            for key in KEYS:
                embeddings.config.pop(key, None)
            embeddings.config.update(saved)
            if ids is not None:
                embeddings.ids = ids
            raise
        else:
            if cursor is not None:
                cursor.execute(f"RELEASE SAVEPOINT {name}")


def reconcile(embeddings):
    """
    Drops the index rows that have no content row, for an instance whose late-interaction index lives in a database (pgvector)
    while its content is local (SQLite, saved in the index folder). Such rows are what a writer committed to the database and
    never saved: their content died with it. Runs at load; needs the table's write lease, so it never touches the rows of a
    live writer (then it only warns).

    Args:
        embeddings: Embeddings instance, just loaded
    """

    database, scoring = embeddings.database, getattr(embeddings, "scoring", None)
    storage = getattr(scoring, "storage", None)
    if storage is None or getattr(storage, "files", True) or database is None or clientsession(database) is not None:
        return

    connection = getattr(database, "connection", None)
    indexids = {row[0] for row in connection.execute("SELECT indexid FROM sections")} if connection is not None else set()
    if storage.count() == len(indexids):
        return

    orphans = np.array([uid for uid in storage.ids().tolist() if uid not in indexids], dtype=np.int64)
    if not len(orphans):
        return

    try:
        storage.apply(orphans, scoring.empty())
    except RuntimeError as error:
        logger.warning("%d index rows have no content row in this folder and were kept: %s", len(orphans), error)
        return

    logger.warning("Dropped %d index rows without content rows (written after the last save by a writer that did not save)", len(orphans))


def ready(database):
    """
    Prepares a client database for a write: a lost connection is replaced (content.Client) and earlier work is committed.

    Args:
        database: txtai client database
    """

    if hasattr(database, "ping"):
        database.ping()

    session = clientsession(database)
    if session is not None:
        if not session.is_active:
            session.rollback()
        commit(database)


def commit(database):
    """
    Commits a client database's session (no-op for other databases: SQLite rows are saved by Embeddings.save).

    Args:
        database: txtai database or None
    """

    session = clientsession(database)
    if session is not None:
        # txtai binds the session to a connection with a transaction of its own (tables, temporary tables): the session's
        # commit leaves that one open, as txtai's own save knows
        session.commit()
        if getattr(database, "dbconnection", None) is not None:
            database.dbconnection.commit()


def rollback(database):
    """
    Rolls a client database's session back. A connection lost midway cannot roll back: the server dropped the transaction
    already, and the next write reconnects.

    Args:
        database: txtai client database
    """

    session = clientsession(database)
    try:
        session.rollback()
    except Exception:  # pylint: disable=W0718
        if hasattr(database, "reconnect"):
            database.reconnect()


def align(embeddings):
    """
    Moves the index offset of an instance with a client database past the largest index id the database holds: the database
    is the source of truth, and another process may have written since this one loaded its config.

    Args:
        embeddings: Embeddings instance with a client database
    """

    # pylint: disable=C0415
    from .content import statement

    row = embeddings.database.connection.execute(statement("SELECT max(indexid) FROM sections")).first()
    if row is not None and row[0] is not None:
        embeddings.config["offset"] = max(int(embeddings.config.get("offset") or 0), int(row[0]) + 1)


def joined(embeddings):
    """
    Context in which the pgvector engine of an instance writes on the instance's content connection, so that content rows and
    index rows commit together, when the instance keeps its content in PostgreSQL and its index in pgvector (the engine joins
    only when both are the same database, on psycopg 3). Otherwise a no-op. The connection is looked up when the engine first
    needs it: an instance being built has no content session yet.

    Args:
        embeddings: Embeddings instance

    Returns:
        context manager
    """

    if not pgconfig(embeddings.config):
        return nullcontext()

    # pylint: disable=C0415
    from ..core import pgvector

    return pgvector.joined(lambda: driverconnection(embeddings.database))


def pgconfig(config):
    """
    Args:
        config: Embeddings config or None

    Returns:
        True if the instance keeps content on a database server and its late-interaction index in pgvector
    """

    config = config or {}
    content, scoring = config.get("content"), config.get("scoring") or config.get("sparse")
    return isinstance(content, str) and "://" in content and isinstance(scoring, dict) and scoring.get("backend") == "pgvector"


def driverconnection(database):
    """
    The psycopg 3 connection under a client database's session, in the session's transaction.

    Args:
        database: txtai client database or None

    Returns:
        psycopg.Connection, or None when there is no session yet or it runs on another driver
    """

    session = clientsession(database)
    if session is None:
        return None

    connection = session.connection().connection.driver_connection
    return connection if type(connection).__module__.split(".")[0] == "psycopg" else None


def clientsession(database):
    """
    The SQLAlchemy session of txtai's client database (txtai.database.Client: `content` set to a database URL).

    Args:
        database: txtai database or None

    Returns:
        sqlalchemy.orm.Session, or None for any other database
    """

    connection = getattr(database, "connection", None)
    return connection if hasattr(database, "dbconnection") and hasattr(connection, "begin_nested") else None
