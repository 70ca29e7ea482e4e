"""
PostgreSQL as the source of truth for txtai's content rows of a late-interaction index: every write call commits, an open index
reconnects after its connections are cut, and a process that writes and dies before saving leaves a loadable index
"""

import subprocess
import sys
import textwrap

import pytest

from txtai import Embeddings

import txtai_muvera  # noqa: F401 pylint: disable=W0611 (registers the package with txtai)

from checkpoints import build_pylate_checkpoint
from conftest import Engine, pgurl

MUVERA = {"repetitions": 4, "hashes": 3, "projection": 8, "seed": 7}

WORDS = "retrieval model query document token vector score search index music history science food travel weather sports".split()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_pylate_checkpoint(tmp_path_factory.mktemp("colbert"), hidden=32, dim=16, document_length=16)


@pytest.fixture(params=["faiss", "pgvector"])
def server(request):
    """
    A fresh PostgreSQL database and Embeddings configs keeping content there, with the index in files (faiss) or in the same
    database (pgvector).
    """

    engine = Engine("pgvector", pgurl())
    engine.backend = request.param
    try:
        yield engine
    finally:
        engine.close()


def config(server, checkpoint):
    """
    Embeddings config of a test: content in the test database, the index in files or in the same database.
    """

    sparse = {"path": str(checkpoint), "muvera": dict(MUVERA), "candidates": 1000, "backend": server.backend}
    if server.backend == "pgvector":
        sparse["pgvector"] = {"url": server.database, "table": "muvera_test"}

    return {"sparse": sparse, "content": server.database.replace("+psycopg2://", "+psycopg://")}


def corpus(size, start=0):
    return [(f"d{i}", " ".join(WORDS[(i * 7 + x) % len(WORDS)] for x in range(5)), None) for i in range(start, start + size)]


def dies(path, documents):
    """
    Runs a process that loads the index at path, upserts documents and exits at once, without saving or closing anything.
    """

    script = textwrap.dedent(
        f"""
        import os
        import txtai_muvera
        from txtai import Embeddings

        embeddings = Embeddings()
        embeddings.load({str(path)!r})
        embeddings.upsert({documents!r})
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)


def rows(embeddings):
    return sorted((row["id"], row["text"]) for row in embeddings.search("select id, text from txtai limit 100000"))


def cut(server):
    # Every connection to the test database is terminated (what a server restart does to open clients)
    server.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{server.dropped}' AND pid <> pg_backend_pid()")


def test_reconnects(server, checkpoint, tmp_path):
    embeddings = Embeddings(config(server, checkpoint))
    embeddings.index(corpus(40))

    # With the index in files, content rows commit at save (both stay at the same point)
    if server.backend == "faiss":
        embeddings.save(str(tmp_path / "index"))
    before = rows(embeddings), embeddings.search("music history science", 5)

    # Reads come back on a new connection, then writes
    cut(server)
    assert (rows(embeddings), embeddings.search("music history science", 5)) == before
    cut(server)
    embeddings.upsert(corpus(5, 40))
    embeddings.delete(["d0"])
    assert embeddings.count() == 44 and len(rows(embeddings)) == 44
    assert embeddings.search("select id from txtai where id = 'd42'")[0]["id"] == "d42"
    if server.backend == "faiss":
        # Unsaved content rows of an index in files are lost with the connection: writes and saves are refused, not misaligned
        cut(server)
        with pytest.raises(ConnectionError, match="Load the index again"):
            embeddings.upsert(corpus(1, 60))
        with pytest.raises(ConnectionError, match="Load the index again"):
            embeddings.save(str(tmp_path / "index"))
        reloaded = Embeddings()
        reloaded.load(str(tmp_path / "index"))
        assert reloaded.count() == 40 and len(rows(reloaded)) == 40
        reloaded.close()
    embeddings.close()


def test_writes_are_committed(server, checkpoint, tmp_path):
    # With a pgvector index, each write call commits its content rows: another process sees them without a save. With an index
    # in files, content rows commit when the index is saved
    embeddings = Embeddings(config(server, checkpoint))
    embeddings.index(corpus(30))
    embeddings.upsert(corpus(5, 30))

    other = Engine.__new__(Engine)
    other.admin = server.database.replace("+psycopg2://", "://")
    import psycopg  # pylint: disable=C0415

    with psycopg.connect(other.admin) as connection:
        visible = connection.execute("SELECT count(*) FROM sections").fetchone()[0] if server.backend == "pgvector" else None
    assert visible == (35 if server.backend == "pgvector" else None)

    embeddings.save(str(tmp_path / "index"))
    with psycopg.connect(other.admin) as connection:
        assert connection.execute("SELECT count(*) FROM sections").fetchone()[0] == 35
    embeddings.close()


def test_writer_dies_before_saving(server, checkpoint, tmp_path):
    # A process loads a saved index, upserts and dies without saving: the saved folder still loads. With a pgvector index it
    # holds the rows the dead process committed (content and index agree) and the next write lands after them; with an index
    # in files, content rows commit with the save, so it holds the saved index and its content, nothing of the dead process
    embeddings = Embeddings(config(server, checkpoint))
    embeddings.index(corpus(50))
    embeddings.save(str(tmp_path / "index"))
    embeddings.close()

    dies(tmp_path / "index", [(f"n{i}", f"weather weather sports travel {i}", None) for i in range(10)] + [("d3", "food food food", None)])

    loaded = Embeddings()
    loaded.load(str(tmp_path / "index"))
    if server.backend == "faiss":
        assert loaded.count() == 50 and rows(loaded) == sorted((uid, text) for uid, text, _ in corpus(50))
        loaded.upsert([("late", "music music history", None)])
        assert loaded.count() == 51 and loaded.search("music music history", 1)[0]["id"] == "late"
        loaded.close()
        return

    assert loaded.count() == 60 and len(rows(loaded)) == 60
    assert loaded.search("select text from txtai where id = 'd3'")[0]["text"] == "food food food"
    assert loaded.search("food food food", 1)[0]["id"] == "d3"

    # The saved offset is behind the database: the next upsert is placed after the dead process's rows, nothing collides
    loaded.upsert([("late", "music music history", None)])
    assert loaded.count() == 61 and loaded.search("music music history", 1)[0]["id"] == "late"
    assert loaded.search("select text from txtai where id = 'n4'")[0]["text"] == "weather weather sports travel 4"
    loaded.close()


def test_local_content_writer_dies_before_saving(server, checkpoint, tmp_path):
    # A pgvector index with content in the folder (content=True): a writer that upserts and dies before saving left index rows
    # whose content died with it; the load drops them, so count, content rows and index agree, and the next upsert works
    if server.backend == "faiss":
        return

    settings = config(server, checkpoint)
    settings["content"] = True
    embeddings = Embeddings(settings)
    embeddings.index(corpus(50))
    embeddings.save(str(tmp_path / "index"))
    embeddings.close()

    dies(tmp_path / "index", [(f"n{i}", f"weather weather sports travel {i}", None) for i in range(10)])

    loaded = Embeddings()
    loaded.load(str(tmp_path / "index"))
    assert loaded.count() == 50 and loaded.scoring.storage.count() == 50 and len(rows(loaded)) == 50
    loaded.upsert([("late", "music music history", None)])
    assert loaded.count() == 51 and loaded.search("music music history", 1)[0]["id"] == "late"
    loaded.close()
