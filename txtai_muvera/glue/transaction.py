"""
Transaction module: index, upsert and delete an Embeddings instance so that a call that raises leaves it exactly as it was

txtai's own `Embeddings.upsert` deletes and re-inserts document database rows batch by batch before a scoring index sees
them, and `Embeddings.index` replaces the database and the scoring index before it reads a document, so no scoring class can
restore content rows after a failure (README, "Failed writes"). These functions wrap the txtai calls: the late-interaction
index is restored by MuveraScoring itself, the document database (SQLite, or txtai's SQLAlchemy client database, e.g.
PostgreSQL) by a savepoint, the index offsets from a copy.
"""

import copy
import uuid

from contextlib import contextmanager

from txtai import Embeddings

# Top-level config keys txtai's writes change
KEYS = ("offset", "autoid", "dimensions")


def index(embeddings, documents, **kwargs):
    """
    Builds a new index from documents, replacing the instance's index only when the build succeeds. txtai's index() replaces
    the database and the scoring index before it reads the first document, so the build runs in a new instance with the same
    configuration and is swapped in at the end.

    Args:
        embeddings: Embeddings instance
        documents: iterable of documents, as for Embeddings.index
        kwargs: further arguments for Embeddings.index

    Returns:
        embeddings
    """

    config = copy.deepcopy(embeddings.config) if embeddings.config else None
    for key in ("offset", "autoid"):
        if config:
            config.pop(key, None)

    # A client database (PostgreSQL) is shared with the new instance, which builds on a connection of its own: the open
    # transaction of this instance is committed first, or the build would wait forever on its row locks. txtai commits a
    # client database only when it saves; the late-interaction rows of a database engine are committed by every write anyway.
    session = clientsession(embeddings.database)
    if session is not None:
        session.commit()

    fresh = Embeddings(config, models=embeddings.models)
    try:
        fresh.index(documents, **kwargs)
    except BaseException:
        fresh.close()
        raise

    # Swap: the old instance's resources are released, then it takes over the new one's state
    embeddings.close()
    embeddings.__dict__.update(fresh.__dict__)
    return embeddings


def upsert(embeddings, documents, **kwargs):
    """
    Upserts documents; a call that raises leaves the instance as it was (index, content rows, offsets).

    Args:
        embeddings: Embeddings instance
        documents: iterable of documents, as for Embeddings.upsert
        kwargs: further arguments for Embeddings.upsert

    Returns:
        embeddings
    """

    # txtai runs a full index() when the instance is empty: that path replaces everything, so build and swap instead
    if not embeddings.count():
        return index(embeddings, documents)

    with transaction(embeddings):
        embeddings.upsert(documents, **kwargs)

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

    with transaction(embeddings):
        deleted = embeddings.delete(ids)

        # Commit the staged deletes of the late-interaction index inside the transaction, so a failure there rolls back too
        embeddings.count()

    return deleted


@contextmanager
def transaction(embeddings):
    """
    Runs a block of txtai writes on one instance; if the block raises, the late-interaction index, the document database and
    the index offsets are restored before the error propagates.

    The document database is rolled back to a savepoint: txtai's SQLite database (its default) through its connection, txtai's
    client database (`content: postgresql://...`, SQLAlchemy) through its session (`begin_nested`, which also drops the ORM
    rows added in the block). Other databases raise before anything is written. A dense ANN index of a hybrid instance is
    not restored (txtai's faiss index has no undo): see the README.

    Args:
        embeddings: Embeddings instance
    """

    database = embeddings.database
    session = clientsession(database)
    if database is not None and session is None and not hasattr(getattr(database, "connection", None), "in_transaction"):
        raise NotImplementedError(
            f"Transactions need txtai's SQLite or client (SQLAlchemy) content database, this instance uses {type(database).__name__}"
        )

    # Apply deletes staged by earlier calls, so the rollback below undoes exactly this block
    scoring = embeddings.scoring if hasattr(embeddings.scoring, "rollback") else None
    if scoring:
        scoring.count()

    saved = {key: copy.deepcopy(embeddings.config.get(key)) for key in KEYS if key in embeddings.config}
    ids = copy.copy(embeddings.ids) if getattr(embeddings, "ids", None) is not None else None
    name = f"txtai_muvera_{uuid.uuid4().hex}"

    cursor, nested = None, None
    if session is not None:
        # SAVEPOINT inside the session's transaction (begun here when none is open); pending ORM rows are flushed first
        nested = session.begin_nested()
    elif database is not None and database.connection is not None:
        cursor = database.connection.cursor()

        # An explicit transaction first: releasing an outermost savepoint would commit into the database file
        if not database.connection.in_transaction:
            cursor.execute("BEGIN")
        cursor.execute(f"SAVEPOINT {name}")

    try:
        yield
    except BaseException:
        if nested is not None and nested.is_active:
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
        if nested is not None and nested.is_active:
            nested.commit()
        if cursor is not None:
            cursor.execute(f"RELEASE SAVEPOINT {name}")


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
