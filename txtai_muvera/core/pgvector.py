"""
PGVector module: the storage engine that keeps FDEs and token matrices in PostgreSQL with pgvector
"""

import functools
import io
import itertools
import json
import os
import re
import socket
import threading
import time
import weakref
import zlib

from contextlib import contextmanager

import numpy as np

# Conditional import
try:
    import psycopg

    from pgvector import HalfVector
    from pgvector.psycopg import register_vector
    from pgvector.psycopg.halfvec import register_halfvec_info
    from psycopg import sql
    from psycopg.types import TypeInfo
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    PGVECTOR = True
except ImportError:
    PGVECTOR = False

from . import codecs as codecmodule
from .files import readjson, writeheader
from .filestorage import SAMPLE
from .staged import Staged
from .storage import Storage

# Saved header and table comment format. Version 2 stores every codec's rows as fixed-width token records (the codec's parts
# back to back, per token); version 1 stored int8 rows as all scales, then all codes. float32 / float16 rows are the same bytes
# in both, so version 1 tables of those codecs still load.
FORMAT, VERSION, VERSIONS = "txtai-muvera-pgvector", 2, (1, 2)

# Engine state tables of a schema. STATE: trained codec state (residual centroids, PQ codebooks) of every index, one bytea row
# per state array keyed by the index's table name, plus a "config" row with the codec's resolved options. GENERATIONS: how many
# writes each index table has committed and who made the last one, so that a writer can tell its view is stale
STATE, GENERATIONS = "muvera_codecs", "muvera_generations"

# Names an index table may not take, in any schema (txtai's content tables live in the search_path's default schema, which may
# be the index's): txtai's content database (documents, objects, sections, its per-connection batch and scores tables, the
# rebuild tables of a reindex, rebuild<ms> on a client database), the default tables of txtai's other PostgreSQL components
# (ann pgvector and pgsparse, scoring pgtext) and this engine's state tables
TXTAI = ("documents", "objects", "sections", "batch", "scores", "rebuild", "vectors", "svectors", "scoring")
RESERVED = TXTAI + (STATE, GENERATIONS)

# First key of the advisory locks of writer leases, pg_try_advisory_lock(int, int): "muve" in ASCII. The second key is a hash of
# the schema-qualified table name.
NAMESPACE = 0x6D757665

# Connections of joined() blocks, per thread (innermost last), and savepoint names of the reads and writes run on them
JOINED, SAVEPOINTS = threading.local(), itertools.count()

# FDE candidate search: HNSW over a count-sketch of the FDE then exact re-scoring, HNSW on the FDE itself, or an exact scan
INDEXES = ("auto", "sketch", "halfvec", "flat")

# Seed of the count-sketch that indexes FDEs over 4,000 dims (stored with the table: changing it needs a rebuild)
SEED = 1234

# pgvector 0.8 limits: halfvec columns hold up to 16,000 dims, HNSW indexes halfvec up to 4,000 dims, ef_search up to 1,000
HALFVEC, HNSWHALFVEC, EFSEARCH = 16000, 4000, 1000

# SQL identifiers: plain names only (quoted anyway), short enough for the derived index name
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,58}$")

# SQLAlchemy drivers accepted in the url; the engine itself always talks through psycopg 3 (binary COPY)
DRIVERS = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")


class LeaseError(RuntimeError):
    """
    Raised when a write finds the index table's write lease held by another process (see PGVectorStorage).
    """


class StaleError(RuntimeError):
    """
    Raised when a write finds that another writer committed to the index table since this instance loaded it or last wrote.
    """


@contextmanager
def joined(connection):
    """
    Runs every PGVectorStorage read and write of the calling thread on a caller's psycopg 3 connection while the block runs,
    when the storage's database is that connection's (same host, port, dbname and user): each write inside a SAVEPOINT, rolled
    back to it on error, each read inside one rolled back after it. The connection's transaction belongs to the caller, who
    commits or rolls it back: content rows and index rows in one database then commit together. The write lease still applies.
    Storages of other databases, and other threads, use their own connections.

    Args:
        connection: psycopg.Connection with autocommit off, or a callable returning one (or None: no join), called when a
                    storage needs it
    """

    stack = JOINED.__dict__.setdefault("stack", [])
    stack.append(connection)
    try:
        yield
    finally:
        stack.pop()


class PGVectorStorage(Storage):
    """
    One PostgreSQL table keyed by index id: `id bigint`, `fde halfvec(dimensions)`, `tokens bytea` (the token matrix in the
    index's codec: one fixed-width record of the codec's parts per token, back to back) and, for FDEs over 4,000 dims,
    `code halfvec(sketch)`. A write is one transaction.

    Every codec of codecs.CODECS is stored. Codecs that need training (residual, pq) train on a sample of the first write's
    tokens (an index built empty: of the first write that has tokens); their state goes to the `muvera_codecs` table of the same
    schema, keyed by table name, in that write's transaction. Later writes (upserts) keep the trained state, as the file engine
    does, so stored codes never change, unless it learned from too few rows (codecs.Codec.trusted): the write after which the
    table holds enough tokens retrains it and re-encodes the stored rows, in its transaction.

    One process writes a table at a time. The first write takes the table's lease, a session-level advisory lock held on a
    connection of its own until `close` (the server drops it with a process that dies); a write of another process is refused
    at once with a LeaseError naming the holder. Each write also counts itself in the `muvera_generations` table: a write whose
    engine has not seen the table's last write (another process wrote since it loaded) is refused with a StaleError, since the
    ids and content of its index are out of date. Reads need neither. Inside `joined`, reads and writes run on the caller's
    connection and commit with its transaction.

    pgvector's HNSW indexes halfvec up to 4,000 dims. Smaller FDEs are indexed as they are (`halfvec_ip_ops`). Larger ones are
    count-sketched (a fixed random sign and bucket per FDE dim, inner products kept in expectation) to `sketch` dims and
    indexed; `oversample` x limit sketch candidates are then re-scored by the exact FDE inner product in SQL. On SciFact FDEs
    (10,240 dims) a 4,000-dim sketch with oversample 4 keeps 94% of the exact FDE top 100; binary codes (`binary_quantize`,
    Hamming) kept 37%. The table's comment holds its settings as JSON.

    Settings (the `pgvector` sub-dict of the scoring config): `url` (SQLAlchemy URL, else env ANN_URL), `schema`, `table`
    (default `muvera`, not one of RESERVED), `index` (auto, sketch, halfvec, flat), `sketch` (dims, <= 4,000), `oversample`
    (sketch candidates per requested candidate), `m`, `efconstruction`, `efsearch` (HNSW). The token codec is the scoring
    config's `tokens`, its options the sub-dict named after it (e.g. `residual: {bits: 2}`).
    """

    # The table is the source of truth: it may hold writes committed after the index folder was saved
    files = False

    def __init__(self, config, dimensions, dim):
        if not PGVECTOR:
            raise ImportError('PostgreSQL storage is not available - install "postgres" extra to enable: pip install txtai-muvera[postgres]')

        super().__init__(config, dimensions, dim)

        # Settings live in the scoring config's "pgvector" sub-dict
        if config.get("pgvector") is None:
            config["pgvector"] = {}
        if not isinstance(config["pgvector"], dict):
            raise TypeError(f"pgvector must be a dict of options, got {config['pgvector']!r}")
        settings = self.settings = config["pgvector"]
        self.tokens = config.get("tokens", "float16")
        if not isinstance(self.tokens, str) or self.tokens not in codecmodule.CODECS:
            raise ValueError(f"Unknown tokens {self.tokens!r} for the pgvector backend, accepted: {', '.join(codecmodule.CODECS)}")

        if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)) or not 1 <= dimensions <= HALFVEC:
            raise ValueError(f"FDE dimensions must be 1..{HALFVEC} for the pgvector backend (halfvec), got {dimensions!r}: lower muvera.final")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"Token dim must be a positive integer, got {dim!r}")
        self.dimensions, self.dim = int(dimensions), int(dim)

        # Token codec: untrained until the first write with tokens when it needs training (residual, pq)
        self.options = config.get(self.tokens) if isinstance(config.get(self.tokens), dict) else {}
        self.codec = codecmodule.create(self.tokens, self.dim, **self.options)

        self.schema = self.identifier("schema", self.setting("schema", None), True)
        self.table = self.reserved(self.identifier("table", self.setting("table", "muvera")))
        self.index = self.setting("index", "auto")
        if self.index not in INDEXES:
            raise ValueError(f"Unknown index {self.index!r} for the pgvector backend, accepted: {', '.join(INDEXES)}")
        if self.index == "auto":
            self.index = "halfvec" if self.dimensions <= HNSWHALFVEC else "sketch"
        if self.index == "halfvec" and self.dimensions > HNSWHALFVEC:
            raise ValueError(f"index 'halfvec' needs FDE dimensions <= {HNSWHALFVEC}, got {self.dimensions}: use 'sketch' or 'flat'")

        self.sketch = self.positive("sketch", self.setting("sketch", min(HNSWHALFVEC, self.dimensions))) if self.index == "sketch" else None
        if self.sketch is not None and self.sketch > HNSWHALFVEC:
            raise ValueError(f"pgvector sketch must be <= {HNSWHALFVEC} (pgvector's HNSW limit for halfvec), got {self.sketch}")
        self.oversample = self.positive("oversample", self.setting("oversample", 4 if self.index == "sketch" else 1))
        # A denser graph than pgvector's defaults (16, 64): over 100k 2,048-dim FDEs it kept 0.99 of the exact MaxSim top 10
        # among 1,000 candidates instead of 0.91, for a 3.7x longer index build and the same index size (an element of over
        # ~1,900 halfvec dims fills an 8 kB page with either neighbour list)
        self.m = self.positive("m", self.setting("m", 32))
        self.efconstruction = self.positive("efconstruction", self.setting("efconstruction", 128))
        self.efsearch = self.positive("efsearch", self.setting("efsearch", 40))

        # Resolved values go back into the config (the url stays where the user put it: config or environment)
        settings.update(schema=self.schema, table=self.table, index=self.index, sketch=self.sketch, oversample=self.oversample)
        settings.update(m=self.m, efconstruction=self.efconstruction, efsearch=self.efsearch)
        self.buckets, self.signs = sketching(self.dimensions, self.sketch) if self.sketch else (None, None)
        self.engine = self.connect(settings.get("url") or os.environ.get("ANN_URL"))

        # A new engine is a new index: its first write replaces the table (in that write's transaction); a loaded one appends
        self.fresh, self.ready = True, False

        # Table writes this engine has seen (None until it loads or writes), its write lease (taken by the first write) with the
        # finalizer that releases it, and writes made on a joined connection whose transaction has not been seen to end, as
        # (transaction id, engine state before the write)
        self.generation, self.writer, self.release, self.pending = None, None, None, []

        # Token rows fetched with the last search of each thread, so the re-rank reads the snapshot its candidates came from
        self.local = threading.local()

    def apply(self, deletes, batches):
        deletes = np.asarray(deletes, dtype=np.int64).reshape(-1)
        self.local.prefetched = {}

        # A write this engine may not make is refused before it is read: another process holds the table, or wrote since
        self.settle()
        self.acquire()

        # A codec that trains or retrains on this write reads its tokens twice: the write is staged first (batches are read once)
        staged = None
        if not self.codec.trained or not self.codec.trusted:
            staged = batches if isinstance(batches, Staged) else self.stage(batches)

        before = (self.codec, self.fresh, self.ready, self.generation)
        try:
            codec, generation, xid = self.write(deletes, staged if staged is not None else batches)
        finally:
            if staged is not None and staged is not batches:
                staged.close()

        # The engine takes the write's state once it commits; a joined write's transaction ends later, see settle
        self.codec, self.generation, self.fresh, self.ready = codec, generation, False, True
        if xid is not None:
            self.pending.append((xid, before))

    def write(self, deletes, batches):
        """
        Runs one write in one transaction (a savepoint of the caller's inside `joined`): the stale check and write count, the new
        table (first write), the deletes, the codec when this write trains one (its state, and the stored rows it re-encodes),
        the rows and the candidate index (first write). Rolls back on any error.

        Args:
            deletes: int64 ids to remove
            batches: iterable of (ids, fdes, matrices), a Staged when the codec may train

        Returns:
            (codec that encoded the rows, table generation after the write, id of the joined transaction or None)
        """

        with self.session(write=True) as (cursor, attached):
            generation = self.advance(cursor)
            if self.fresh:
                self.create(cursor)
            elif len(deletes):
                cursor.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self.name()), (deletes.tolist(),))

            codec = self.train(cursor, batches)
            if codec is not self.codec:
                self.savestate(cursor, codec)

            self.copy(cursor, batches, codec)

            # Bulk build: the HNSW index of a new table is built once, after its rows are in
            if self.fresh:
                self.build(cursor)

            xid = cursor.execute("SELECT pg_current_xact_id()::text").fetchone()[0] if attached else None

        return codec, generation, xid

    def copy(self, cursor, batches, codec):
        """
        Adds rows with one binary COPY (no text round trip for 10k-dim FDEs and token bytes).

        Args:
            cursor: psycopg cursor, in the write's transaction
            batches: iterable of (ids, fdes, matrices)
            codec: codec that encodes the rows
        """

        columns = "id, fde, tokens, code" if self.sketch else "id, fde, tokens"
        statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(self.name(), sql.SQL(columns))
        try:
            with cursor.copy(statement) as writer:
                writer.set_types(["int8", "halfvec", "bytea", "halfvec"][: 4 if self.sketch else 3])
                for ids, fdes, matrices in batches:
                    ids, fdes, tokens, codes = self.rows(ids, fdes, matrices, codec)
                    for x, (uid, fde, row) in enumerate(zip(ids, fdes, tokens)):
                        writer.write_row((uid, HalfVector(fde), row, HalfVector(codes[x])) if self.sketch else (uid, HalfVector(fde), row))
        except psycopg.errors.UniqueViolation as error:
            # Ids are written once (a replaced document is deleted in the same write): the table holds rows this index does not
            # know, written by an index whose content was not saved with them, or by another index using the same table
            raise ValueError(
                f"Write refused: {error.diag.message_detail or 'an id'} in table {self.qualified()}. The table holds rows this index "
                "does not know: another index writes this table, or a writer committed rows whose content was never saved"
            ) from error

    def train(self, cursor, batches):
        """
        The codec of this write: the current one, unless it needs training and this write brings the first tokens (trained on a
        sample of them), or it learned from too few rows (codecs.Codec.trusted) and the table holds `enough` tokens after this
        write. Then a new codec learns from a sample of every token the table will hold (the stored rows, few by definition,
        decoded, plus this write's) and the stored rows are re-encoded with it, in this write's transaction.

        Args:
            cursor: psycopg cursor, in the write's transaction, after its deletes
            batches: the write's batches: a Staged when the codec may train

        Returns:
            Codec, the current one when nothing was trained
        """

        current = self.codec
        if (current.trained and current.trusted) or not isinstance(batches, Staged) or not batches.store.tokens:
            return current

        # A fresh codec from the configured options: a trained one has resolved them for its sample (e.g. residual centroids)
        codec = codecmodule.create(self.tokens, self.dim, **self.options)
        if self.fresh or not current.trained:
            codec.train(batches.sample(SAMPLE))
            return codec

        rows = cursor.execute(sql.SQL("SELECT id, tokens FROM {} WHERE length(tokens) > 0 ORDER BY id").format(self.name())).fetchall()
        tokens, offsets, _ = self.decode([bytes(row[1]) for row in rows])
        tokens = np.asarray(tokens, dtype=np.float32)
        stored, total = len(tokens), len(tokens) + batches.store.tokens
        if total < current.enough:
            return current

        # Rows drawn from the stored documents and this write's in proportion to their tokens
        share = stored if total <= SAMPLE else round(SAMPLE * stored / total)
        picked = np.sort(np.random.default_rng(0).choice(stored, share, replace=False))
        codec.train(np.concatenate([tokens[picked], batches.sample(min(SAMPLE, total) - share)]))

        if rows:
            encoded = self.encode(np.split(tokens, offsets[1:-1]), codec)
            statement = sql.SQL("UPDATE {} SET tokens = %s WHERE id = %s").format(self.name())
            cursor.executemany(statement, [(value, row[0]) for value, row in zip(encoded, rows)])

        return codec

    def advance(self, cursor):
        """
        Counts this write in the table's generation row, after checking that no other writer committed since this engine loaded
        the table or last wrote to it (a new index replaces the table, whatever it held). The row stays locked until the write
        ends, so writes of one table queue there even past the lease.

        Args:
            cursor: psycopg cursor, first statement of the write's transaction

        Returns:
            table generation after this write
        """

        table = self.name(GENERATIONS)
        row = cursor.execute(
            sql.SQL("SELECT generation, writer, written FROM {} WHERE tablename = %s FOR UPDATE").format(table), (self.table,)
        ).fetchone()
        stored = row[0] if row else 0
        if not self.fresh and stored != self.generation:
            writer, written = (row[1], f" at {row[2].isoformat(timespec='seconds')}") if row else ("another writer", "")
            raise StaleError(
                f"pgvector index table {self.qualified()} changed since this instance loaded it: its last write ({stored}) was "
                f"committed by {writer}{written}, this instance has seen write {self.generation}. Its ids and content are out of "
                "date: load the index again, then write"
            )

        cursor.execute(
            sql.SQL(
                "INSERT INTO {} (tablename, generation, writer, written) VALUES (%s, %s, %s, now()) ON CONFLICT (tablename) DO UPDATE "
                "SET generation = EXCLUDED.generation, writer = EXCLUDED.writer, written = EXCLUDED.written"
            ).format(table),
            (self.table, stored + 1, writername()),
        )

        return stored + 1

    def settle(self):
        """
        Resolves writes made on a joined connection once their transaction has ended: kept when it committed, undone in this
        engine's state (codec, table state, generation) when it rolled back. While it is open, the engine keeps the state the
        write left, which a read of another thread may find ahead of its snapshot.
        """

        while self.pending:
            xid, before = self.pending[0]
            with self.session() as (cursor, _):
                status = cursor.execute("SELECT pg_xact_status(%s::xid8)::text", (xid,)).fetchone()[0]

                # Too old for the server to tell: the table's generation does
                if status is None:
                    status = "committed" if self.written(cursor) == self.generation else "aborted"

            if status == "in progress":
                return

            if status == "aborted":
                # Later writes built on this one: their transaction is the same or could not commit (see advance)
                self.codec, self.fresh, self.ready, self.generation = before
                self.pending, self.local.prefetched = [], {}
                return

            self.pending.pop(0)

    def acquire(self):
        """
        Takes the table's write lease before this engine's first write (see Lease) and checks it before every later one.
        """

        if self.writer is not None:
            self.writer.check()
            return

        with self.session() as (cursor, _):
            # The lease is keyed by the table's schema as the server resolves it (search_path) when none is set
            schema = self.schema or cursor.execute("SELECT current_schema()").fetchone()[0]

        qualified = f'"{schema}"."{self.table}"'
        lease = Lease.acquire((os.getpid(), *self.server[:3], qualified), (NAMESPACE, lockkey(qualified)), qualified, self.dedicated)
        self.writer, self.release = lease, weakref.finalize(self, lease.release)
        try:
            self.prepare()
        except BaseException:
            self.release()
            self.writer = self.release = None
            raise

    def prepare(self):
        """
        Creates the schema and its generations table when missing, in a short transaction of its own: first writes of several
        tables then never race to create them.
        """

        with self.connection() as conn:
            try:
                if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.qualified(GENERATIONS),)).fetchone()[0]:
                    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (NAMESPACE, lockkey(self.qualified(GENERATIONS))))
                    if self.schema:
                        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
                    columns = "tablename text PRIMARY KEY, generation bigint NOT NULL, writer text NOT NULL, written timestamptz NOT NULL"
                    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(self.name(GENERATIONS), sql.SQL(columns)))
                conn.commit()
            except BaseException:
                quietly(conn.rollback)
                raise

    def written(self, cursor):
        """
        Reads the table's generation: the writes committed to it, 0 for a table written before generations were kept.

        Args:
            cursor: psycopg cursor

        Returns:
            int
        """

        if not cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (self.qualified(GENERATIONS),)).fetchone()[0]:
            return 0

        row = cursor.execute(sql.SQL("SELECT generation FROM {} WHERE tablename = %s").format(self.name(GENERATIONS)), (self.table,)).fetchone()
        return row[0] if row else 0

    def stage(self, batches):
        """
        Collects an iterable of batches into a Staged (float32, as given), so that a codec can train on a sample of it.

        Args:
            batches: iterable of (ids, fdes, matrices)

        Returns:
            Staged
        """

        staged = Staged(self.dim, "float32")
        try:
            for ids, fdes, matrices in batches:
                # Rows are checked here, with the messages of a direct write, before the stage's own checks
                self.rows(ids, fdes, matrices, None)
                staged.add(ids, fdes, matrices)
        except BaseException:
            staged.close()
            raise

        return staged

    def search(self, queries, limit, options):
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimensions:
            raise ValueError(f"queries must be (n, {self.dimensions}) FDEs, got shape {queries.shape}")
        if not np.isfinite(queries).all():
            raise ValueError("queries contain NaN or infinite values")

        limit = self.positive("limit", limit)
        scores, ids = np.zeros((len(queries), limit), dtype=np.float32), np.full((len(queries), limit), -1, dtype=np.int64)
        self.local.prefetched = {}
        self.settle()
        if not self.ready or not len(queries):
            return scores, ids

        # Candidates: binary codes over-fetch, then every query re-scores its candidates by the exact FDE inner product
        candidates = limit * self.oversample

        # The iterative scan returns every candidate whatever ef_search: raising it to the candidate count cost time for no
        # recall (100k 2,048-dim FDEs, 1,000 candidates: ef_search 1,000 took 112 ms per query, 40 took 83 ms, same recall)
        efsearch = min(options.efsearch or self.efsearch, EFSEARCH)
        prefetch = options.rerank is not False and self.config.get("rerank", True) is not False
        statement = self.query(candidates, prefetch)

        with self.session() as (cursor, attached):
            # One snapshot for every query of the call (joined: the caller's transaction's). SET LOCAL ends with the transaction,
            # or joined, with the read's savepoint.
            if not attached:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if self.index != "flat":
                cursor.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(efsearch)))
                cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")

                # The planner prices a scan of out-of-line vectors far too low and skips the HNSW index on small tables
                cursor.execute("SET LOCAL enable_seqscan = off")

            # Binary results: token bytes come as stored, not as hex text of twice their size that both ends convert (at 1,000
            # candidates of ~70 tokens that conversion was a quarter of the search)
            codes = self.code(queries) if self.sketch else queries
            for x, query in enumerate(queries):
                parameters = {"query": HalfVector(query), "code": HalfVector(codes[x]), "candidates": candidates, "limit": limit}
                cursor.execute(statement, parameters, binary=True)
                for y, row in enumerate(cursor.fetchall()):
                    ids[x, y], scores[x, y] = row[0], row[1]
                    if prefetch:
                        self.local.prefetched[row[0]] = row[2]

        return scores, ids

    def gather(self, ids, decode=True):
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = getattr(self.local, "prefetched", {})

        missing = [uid for uid in ids.tolist() if uid not in rows]
        if missing:
            rows = {**rows, **self.fetch(missing)}
            absent = [uid for uid in missing if uid not in rows]
            if absent:
                raise KeyError(f"ids not stored: {absent[:10]}")

        return self.decode([rows[uid] for uid in ids.tolist()], decode)

    def count(self):
        self.settle()
        if not self.ready:
            return 0

        with self.session() as (cursor, _):
            return cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(self.name())).fetchone()[0]

    def ids(self):
        self.settle()
        if not self.ready:
            return np.zeros(0, dtype=np.int64)

        with self.session() as (cursor, _):
            rows = cursor.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(self.name())).fetchall()

        return np.array([row[0] for row in rows], dtype=np.int64)

    def nbytes(self):
        """
        Returns:
            bytes the table, its TOAST data and its indexes take in the database
        """

        self.settle()
        if not self.ready:
            return 0

        with self.session() as (cursor, _):
            return cursor.execute("SELECT pg_total_relation_size(%s::regclass)", (self.qualified(),)).fetchone()[0]

    def save(self, path):
        # An index saved before its first write is an empty table
        self.settle()
        if self.fresh:
            self.apply(np.zeros(0, dtype=np.int64), [])

        # Data lives in the database: the folder holds only what the table must match
        path = os.path.join(path, "pgvector")
        os.makedirs(path, exist_ok=True)
        writeheader(path, {"format": FORMAT, "version": VERSION, **self.layout()})

    def load(self, path):
        path = os.path.join(path, "pgvector")
        header = readjson(os.path.join(path, "header.json"), "pgvector storage header")
        self.check(header, f"Saved pgvector storage at {path}")

        # The generation is read first: a write committed after it makes this engine's view stale, never the other way round
        with self.session() as (cursor, _):
            generation = self.written(cursor)

        stored = self.describe()
        if stored is None:
            raise ValueError(f"Table {self.qualified()} not found in the database: the index saved at {path} needs it")
        self.check(stored, f"Table {self.qualified()}")

        self.codec = self.loadstate()
        self.fresh, self.ready, self.generation, self.pending = False, True, generation, []

    def close(self):
        # The lease goes first: another process may write as soon as this one stops
        if self.release is not None:
            self.release()
            self.writer, self.release = None, None

        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def setting(self, name, default):
        """
        Reads a setting.

        Args:
            name: setting name
            default: value when unset

        Returns:
            value
        """

        value = self.settings.get(name)
        return default if value is None else value

    def layout(self):
        """
        Returns:
            what a stored table must match: its name, FDE and token shapes, codec and candidate index
        """

        layout = {
            "schema": self.schema,
            "table": self.table,
            "dimensions": self.dimensions,
            "dim": self.dim,
            "tokens": self.tokens,
            "index": self.index,
        }
        return {**layout, "sketch": self.sketch, "seed": SEED if self.sketch else None}

    def check(self, stored, what):
        """
        Checks stored settings against this engine's.

        Args:
            stored: settings dict (header or table comment)
            what: what holds them, for error messages
        """

        if stored.get("format") != FORMAT:
            raise ValueError(f"{what} is not txtai-muvera pgvector storage: format {stored.get('format')!r}, expected {FORMAT!r}")
        if stored.get("version") not in VERSIONS:
            raise ValueError(f"{what} has version {stored.get('version')!r}; this txtai-muvera reads versions {', '.join(map(str, VERSIONS))}")
        if stored.get("version") == 1 and self.tokens not in ("float32", "float16"):
            raise ValueError(f"{what} has version 1, whose {self.tokens!r} token rows this txtai-muvera no longer reads: rebuild the index")

        for key, value in self.layout().items():
            if key != "schema" and stored.get(key) != value:
                raise ValueError(f"{what} has {key} {stored.get(key)!r}, this index expects {value!r}")

    def connect(self, url):
        """
        Creates the SQLAlchemy engine (connection pool) and makes sure pgvector is installed. Also sets what the engine knows
        of its database: `server` (host, port, dbname, user, as psycopg reports them), `halfvec` (the type, registered on joined
        connections' cursors) and `dedicated` (opens a connection outside the pool, for the write lease).

        Args:
            url: SQLAlchemy URL

        Returns:
            engine
        """

        if not url:
            raise ValueError(
                "pgvector backend needs a url: set pgvector.url (postgresql+psycopg2://user@host/db) or the ANN_URL environment variable"
            )

        try:
            parsed = make_url(url)
        except Exception as error:
            raise ValueError(f"Invalid pgvector url: {error}") from error
        if parsed.drivername not in DRIVERS:
            raise ValueError(f"Unsupported pgvector url driver {parsed.drivername!r}, accepted: {', '.join(DRIVERS)}")

        engine = create_engine(parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def vectors(connection, _):
            # Extension first (idempotent; needs CREATE privilege the first time), then pgvector's types for binary transfer
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
                if not cursor.fetchone():
                    cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
            connection.commit()
            register_vector(connection)

        # Fail here, with the server's message, rather than at the first write
        try:
            with engine.connect() as connection:
                driver = connection.connection.driver_connection
                self.server = (driver.info.host, driver.info.port, driver.info.dbname, driver.info.user)
                self.halfvec = TypeInfo.fetch(driver, "halfvec")
        except Exception as error:
            engine.dispose()
            raise ConnectionError(f"Unable to connect to PostgreSQL at {parsed.render_as_string(hide_password=True)}: {error}") from error

        # The connection arguments only, not the engine: a lease outlives the storage that took it when others share it
        args, params = engine.dialect.create_connect_args(engine.url)
        self.dedicated = functools.partial(dedicated, args, params)

        return engine

    @contextmanager
    def connection(self):
        """
        Borrows a psycopg connection from the pool.

        Returns:
            psycopg connection (returned to the pool on exit)
        """

        if self.engine is None:
            raise RuntimeError("pgvector storage is closed")

        raw = self.engine.raw_connection()
        try:
            yield raw.driver_connection
        finally:
            raw.close()

    @contextmanager
    def session(self, write=False):
        """
        A cursor for one read or write. Inside `joined`, on the caller's connection when it is this engine's database: a write
        runs inside a savepoint (rolled back to it on error), a read inside one rolled back after it, and the caller's transaction
        is never ended. Otherwise on a pool connection, in a transaction of its own: committed after a write, rolled back after a
        read or an error.

        Args:
            write: commit (pool) or keep (joined) what the block did

        Returns:
            (psycopg cursor, True when it runs on a joined connection)
        """

        attached = self.attached()
        if attached is None:
            with self.connection() as conn:
                try:
                    with conn.cursor() as cursor:
                        yield cursor, False
                    if write:
                        conn.commit()
                finally:
                    # Reads and failed writes end here; after a commit there is nothing left to roll back
                    quietly(conn.rollback)
            return

        # pgvector's types for this block's cursor only: the caller's connection keeps its own adapters
        savepoint = sql.Identifier(f"txtai_muvera_{next(SAVEPOINTS)}")
        attached.execute(sql.SQL("SAVEPOINT {}").format(savepoint))
        try:
            with attached.cursor() as cursor:
                register_halfvec_info(cursor, self.halfvec)
                yield cursor, True
        except BaseException:
            quietly(lambda: attached.execute(sql.SQL("ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}").format(savepoint)))
            raise

        if not write:
            attached.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(savepoint))
        attached.execute(sql.SQL("RELEASE SAVEPOINT {}").format(savepoint))

    def attached(self):
        """
        The connection of the innermost `joined` block of this thread, when it is this engine's database.

        Returns:
            psycopg connection or None
        """

        stack = getattr(JOINED, "stack", None)
        if not stack:
            return None

        connection = stack[-1]() if callable(stack[-1]) else stack[-1]
        if connection is None:
            return None
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(f"joined needs a psycopg 3 connection (psycopg.Connection), got {type(connection).__name__}")
        if connection.closed:
            raise psycopg.OperationalError("the joined connection is closed: its transaction is lost")

        info = connection.info
        if (info.host, info.port, info.dbname, info.user) != self.server:
            return None
        if connection.autocommit:
            raise ValueError("joined needs a connection with autocommit off: the writes join its transaction, which the caller ends")

        return connection

    def create(self, cursor):
        """
        Replaces the table with a new empty one (inside the caller's transaction).

        Args:
            cursor: psycopg cursor
        """

        # The schema exists already: prepare, run with the lease, created it
        name = self.name()
        cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        code = sql.SQL(", code halfvec({}) NOT NULL").format(sql.Literal(self.sketch)) if self.sketch else sql.SQL("")
        cursor.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, fde halfvec({}) NOT NULL, tokens bytea NOT NULL{})").format(
                name, sql.Literal(self.dimensions), code
            )
        )

        # Token bytes do not compress: store them out of line without trying
        cursor.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN tokens SET STORAGE EXTERNAL").format(name))
        cursor.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(name, sql.Literal(json.dumps({"format": FORMAT, "version": VERSION, **self.layout()})))
        )

        # Codec state of a previous index under this name goes with it (the state table is created when a codec needs it)
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (self.qualified(STATE),))
        if cursor.fetchone()[0]:
            cursor.execute(sql.SQL("DELETE FROM {} WHERE tablename = %s").format(self.name(STATE)), (self.table,))

    def savestate(self, cursor, codec):
        """
        Writes a trained codec's state (inside the caller's transaction): its resolved config and each state array as .npy
        bytes, keyed by this index's table name.

        Args:
            cursor: psycopg cursor
            codec: trained Codec
        """

        state = self.name(STATE)
        columns = "tablename text NOT NULL, part text NOT NULL, value bytea NOT NULL, PRIMARY KEY (tablename, part)"
        cursor.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(state, sql.SQL(columns)))
        cursor.execute(sql.SQL("DELETE FROM {} WHERE tablename = %s").format(state), (self.table,))

        rows = [("config", json.dumps(codec.config).encode("utf-8"))]
        for part, array in codec.state().items():
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
            rows.append((part, buffer.getvalue()))

        cursor.executemany(sql.SQL("INSERT INTO {} (tablename, part, value) VALUES (%s, %s, %s)").format(state), [(self.table, *row) for row in rows])

    def loadstate(self):
        """
        Reads this index's codec from the database: the trained state when one was stored, an untrained codec otherwise (an
        index whose writes held no tokens yet).

        Returns:
            Codec
        """

        if self.codec.trained:
            return self.codec

        with self.session() as (cursor, _):
            rows = []
            if cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (self.qualified(STATE),)).fetchone()[0]:
                statement = sql.SQL("SELECT part, value FROM {} WHERE tablename = %s").format(self.name(STATE))
                rows = cursor.execute(statement, (self.table,)).fetchall()
            stored = cursor.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE length(tokens) > 0)").format(self.name())).fetchone()[0]

        state = {part: bytes(value) for part, value in rows}
        if "config" not in state:
            if stored:
                raise ValueError(f"Table {self.qualified()} holds {self.tokens!r} token codes but no trained codec state in {self.qualified(STATE)}")
            return self.codec

        try:
            config = json.loads(state.pop("config").decode("utf-8"))
            codec = codecmodule.fromconfig(config, self.dim)
            codec.restore({part: np.load(io.BytesIO(value), allow_pickle=False) for part, value in state.items()})
        except ValueError as error:
            raise ValueError(f"Corrupt codec state of table {self.qualified()} in {self.qualified(STATE)}: {error}") from error

        if codec.name != self.tokens:
            raise ValueError(f"Codec state of table {self.qualified()} is for tokens {codec.name!r}, this index expects {self.tokens!r}")

        return codec

    def build(self, cursor):
        """
        Creates the candidate index of a new table.

        Args:
            cursor: psycopg cursor
        """

        if self.index == "flat":
            return

        cursor.execute(
            sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} halfvec_ip_ops) WITH (m = {}, ef_construction = {})").format(
                sql.Identifier(f"{self.table}_fde"),
                self.name(),
                sql.Identifier("code" if self.sketch else "fde"),
                sql.Literal(self.m),
                sql.Literal(self.efconstruction),
            )
        )

    def code(self, fdes):
        """
        Count-sketches FDEs to the indexed dims: each FDE dim adds, with its sign, into its bucket.

        Args:
            fdes: float32 (n, dimensions)

        Returns:
            float32 (n, sketch)
        """

        # Dims sorted by bucket, then one segment sum per bucket
        order, starts, buckets = self.buckets
        codes = np.zeros((len(fdes), self.sketch), dtype=np.float32)
        if len(fdes):
            codes[:, buckets] = np.add.reduceat((np.asarray(fdes, dtype=np.float32) * self.signs)[:, order], starts, axis=1)

        return codes

    def query(self, candidates, prefetch):
        """
        Builds the search statement for one query: candidates in index order, re-scored by the exact inner product.

        Args:
            candidates: candidates fetched from the index
            prefetch: also return the token bytes of the results

        Returns:
            sql.Composed with placeholders query, candidates, limit
        """

        name, query = self.name(), sql.SQL("%(query)s::halfvec({})").format(sql.Literal(self.dimensions))
        if self.sketch:
            order = sql.SQL("code <#> %(code)s::halfvec({})").format(sql.Literal(self.sketch))
        else:
            order = sql.SQL("fde <#> {}").format(query)

        tokens = sql.SQL(", tokens") if prefetch else sql.SQL("")
        return sql.SQL(
            "SELECT id, score{tokens} FROM (SELECT id, -(fde <#> {query}) AS score{tokens} FROM "
            "(SELECT id, fde{tokens} FROM {name} ORDER BY {order} LIMIT %(candidates)s) candidates) scored "
            "ORDER BY score DESC, id LIMIT %(limit)s"
        ).format(tokens=tokens, query=query, name=name, order=order)

    def rows(self, ids, fdes, matrices, codec):
        """
        Checks one batch and turns it into rows.

        Args:
            ids: int64 (n,)
            fdes: float32 (n, dimensions)
            matrices: list of float32 (t, dim)
            codec: Codec that encodes the tokens, None to only check the batch

        Returns:
            (ids list, float16 FDEs, token bytes list, float16 sketch codes or None)
        """

        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be a 1-d integer array, got {ids.dtype} shape {ids.shape}")

        fdes = np.asarray(fdes, dtype=np.float32)
        if fdes.shape != (len(ids), self.dimensions):
            raise ValueError(f"FDEs must be ({len(ids)}, {self.dimensions}), got shape {fdes.shape}")

        # halfvec holds float16: NaN, infinity and values past float16's range are refused before the server sees them
        with np.errstate(over="ignore"):
            half = fdes.astype(np.float16)
        if not np.isfinite(half).all():
            raise ValueError("FDEs contain NaN, infinite or out of float16 range values")

        if len(matrices) != len(ids):
            raise ValueError(f"Got {len(matrices)} token matrices for {len(ids)} ids")

        codes = None
        if self.sketch:
            with np.errstate(over="ignore"):
                codes = self.code(fdes).astype(np.float16)
            if not np.isfinite(codes).all():
                raise ValueError("FDE sketches exceed float16 range")

        tokens = self.encode(matrices, codec)
        return ids.astype(np.int64).tolist(), half, tokens, codes

    def encode(self, matrices, codec):
        """
        Encodes a batch of token matrices with a codec, all rows in one call.

        Args:
            matrices: list of float32 (t, dim)
            codec: Codec, None to only check the matrices

        Returns:
            list of bytes, one per matrix: its tokens' records back to back (None when codec is None)
        """

        arrays = []
        for matrix in matrices:
            matrix = np.asarray(matrix, dtype=np.float32)
            matrix = matrix.reshape(0, self.dim) if matrix.size == 0 else matrix
            if matrix.ndim != 2 or matrix.shape[1] != self.dim:
                raise ValueError(f"Token matrices must be (tokens, {self.dim}), got shape {matrix.shape}")
            arrays.append(matrix)

        rows = np.concatenate(arrays) if arrays else np.zeros((0, self.dim), dtype=np.float32)
        if not np.isfinite(rows).all():
            raise ValueError("Token matrix contains NaN or infinite values")
        if codec is None:
            return None

        lengths = np.array([len(x) for x in arrays], dtype=np.int64)
        if not len(rows):
            return [b""] * len(arrays)

        # Values past float16's range would be stored as inf
        codes = codec.encode(rows)
        if codec.name == "float16" and not np.isfinite(codes["tokens"]).all():
            raise ValueError("Token matrices exceed the float16 range (+-65504): use tokens float32")

        block = np.empty(len(rows), dtype=records(codec))
        for name, array in codes.items():
            block[name] = array

        data, width = block.tobytes(), block.dtype.itemsize
        ends = np.cumsum(lengths) * width
        return [data[end - length * width : end] for end, length in zip(ends.tolist(), lengths.tolist())]

    def decode(self, rows, decode=True):
        """
        Decodes token bytes into the flat form of maxsim_flat, the whole block at once: float32 / float16 / int8 rows come back
        as stored (int8 with its scales), other codecs decode to float32 or, with decode False, stay a codecs.Codes block, as
        TokenStore.gather does.

        Args:
            rows: list of bytes
            decode: decode codes that are not scored as stored

        Returns:
            (tokens (T, dim) array or Codes, offsets (len + 1,) int64, scale (T,) float32 or None)
        """

        record = records(self.codec)
        sizes = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
        if np.any(sizes % record.itemsize):
            raise ValueError(
                f"Token bytes in table {self.qualified()} are not whole {record.itemsize}-byte {self.tokens!r} token records: the table is corrupt"
            )

        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(sizes // record.itemsize, out=offsets[1:])

        # One buffer, one structured view: each part is a column of it, converted to native byte order
        block = np.frombuffer(b"".join(rows), dtype=record)
        codes = {name: block[name].astype(dtype) for name, (dtype, _) in self.codec.parts().items()}

        if not self.codec.native:
            # An index whose writes held no tokens has no trained state to decode with, and nothing to decode
            tokens, scale = self.codec.flat(codes, decode) if len(block) else (np.zeros((0, self.dim), dtype=np.float32), None)
            return tokens, offsets, scale

        tokens, scale = self.codec.flat(codes)
        values = scale if scale is not None else tokens
        if not np.isfinite(values).all():
            raise ValueError(f"Stored tokens in table {self.qualified()} are NaN or infinite: the table is corrupt")

        return tokens, offsets, scale

    def fetch(self, ids):
        """
        Reads token bytes of ids.

        Args:
            ids: list of ids

        Returns:
            {id: bytes}
        """

        self.settle()
        with self.session() as (cursor, _):
            statement = sql.SQL("SELECT id, tokens FROM {} WHERE id = ANY(%s)").format(self.name())
            rows = cursor.execute(statement, (list(ids),), binary=True).fetchall()

        return {uid: bytes(tokens) for uid, tokens in rows}

    def describe(self):
        """
        Reads the stored table's settings.

        Returns:
            settings dict from the table comment, or None when the table does not exist
        """

        with self.session() as (cursor, _):
            row = cursor.execute(
                "SELECT obj_description(to_regclass(%s), 'pg_class'), to_regclass(%s) IS NOT NULL", (self.qualified(),) * 2
            ).fetchone()

        if not row[1]:
            return None

        try:
            return json.loads(row[0] or "")
        except ValueError as error:
            raise ValueError(f"Table {self.qualified()} is not a txtai-muvera pgvector table (comment: {row[0]!r})") from error

    def name(self, table=None):
        """
        Args:
            table: a table of this index's schema, defaults to the index table

        Returns:
            quoted table name
        """

        table = table or self.table
        return sql.Identifier(self.schema, table) if self.schema else sql.Identifier(table)

    def qualified(self, table=None):
        """
        Args:
            table: a table of this index's schema, defaults to the index table

        Returns:
            quoted table name as text, for to_regclass
        """

        table = table or self.table
        return f'"{self.schema}"."{table}"' if self.schema else f'"{table}"'

    @staticmethod
    def identifier(name, value, optional=False):
        """
        Checks an SQL identifier setting.

        Args:
            name: setting name
            value: setting value
            optional: None is accepted

        Returns:
            value
        """

        if value is None and optional:
            return None
        if not isinstance(value, str) or not IDENTIFIER.match(value):
            raise ValueError(
                f"pgvector {name} must be a plain SQL identifier (letters, digits, underscores, 1-59 chars, no leading digit), got {value!r}"
            )

        return value

    @staticmethod
    def reserved(table):
        """
        Checks that a table name, and the names derived from it, are none of txtai's tables or this engine's state tables.

        Args:
            table: table name

        Returns:
            table
        """

        names = (table.lower(), f"{table}_fde".lower())
        if any(name in RESERVED or re.fullmatch(r"rebuild\d+", name) for name in names):
            raise ValueError(
                f"pgvector table {table!r} is reserved, in any schema: txtai keeps its own tables under {', '.join(TXTAI)} and "
                f"rebuild<digits>, this engine its state under {STATE}, {GENERATIONS}. Choose another table name"
            )

        return table

    @staticmethod
    def positive(name, value):
        """
        Checks a positive integer setting.

        Args:
            name: setting name
            value: setting value

        Returns:
            int
        """

        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"pgvector {name} must be a positive integer, got {value!r}")

        return int(value)


def records(codec):
    """
    The stored record of one token: the codec's parts back to back, little-endian, no padding.

    Args:
        codec: Codec (trained, when its parts depend on the trained state)

    Returns:
        numpy structured dtype
    """

    return np.dtype([(name, np.dtype(dtype).newbyteorder("<"), shape) for name, (dtype, shape) in codec.parts().items()])


def sketching(dimensions, size):
    """
    The fixed count-sketch: a bucket and a sign for every FDE dim.

    Args:
        dimensions: FDE dims
        size: sketch dims

    Returns:
        ((dims sorted by bucket, segment starts, bucket of each segment), signs float32 (dimensions,))
    """

    rng = np.random.default_rng(SEED)
    buckets, signs = rng.integers(0, size, dimensions), rng.choice(np.array([-1.0, 1.0], dtype=np.float32), dimensions)
    order = np.argsort(buckets, kind="stable")
    used, starts = np.unique(buckets[order], return_index=True)
    return (order, starts, used), signs


class Lease:
    """
    Write lease of one index table: a session-level advisory lock held on a connection of its own, for as long as a storage of
    this process that wrote to the table is open. The server drops the lock with its connection, so a writer that dies never
    blocks another. Storages of one process share the lease of a table (a rebuild runs beside the index it replaces).
    """

    # Leases this process holds, by process id, server, database and table, and the lock that guards them
    held, guard = {}, threading.RLock()

    def __init__(self, key, lock, qualified, connect):
        """
        Creates a lease, not yet taken.

        Args:
            key: registry key
            lock: advisory lock keys (int, int)
            qualified: schema-qualified table name, for messages
            connect: opens the lease connection
        """

        self.key, self.lock, self.qualified, self.connect = key, lock, qualified, connect
        self.connection, self.holders = None, 0

    @classmethod
    def acquire(cls, key, lock, qualified, connect):
        """
        Takes the lease of a table, or shares the one this process holds.

        Args:
            key: registry key
            lock: advisory lock keys (int, int)
            qualified: schema-qualified table name
            connect: opens the lease connection

        Returns:
            Lease, released by each holder with release()
        """

        with cls.guard:
            lease = cls.held.get(key)
            if lease is None:
                lease = cls(key, lock, qualified, connect)
                lease.take()
                cls.held[key] = lease
            else:
                lease.check()

            lease.holders += 1
            return lease

    def check(self):
        """
        Makes sure the lease is held. A lost lease connection (server restart, terminated backend) lost the lock with it: it is
        taken again, or refused when another writer holds it now (a write that one committed meanwhile makes this engine's view
        stale, see PGVectorStorage.advance).
        """

        with Lease.guard:
            try:
                if self.connection is not None:
                    self.connection.execute("SELECT 1")
                    return
            except psycopg.Error:
                quietly(self.connection.close)
                self.connection = None

            self.take()

    def take(self):
        """
        Opens the lease connection and takes the lock.
        """

        connection = self.connect()
        try:
            # A holder named after this process is its own lost lease connection, whose server session is still ending
            for _ in range(40):
                if connection.execute("SELECT pg_try_advisory_lock(%s, %s)", self.lock).fetchone()[0]:
                    break
                holder = self.holder(connection)
                if not holder or holder[1] != writername():
                    raise LeaseError(self.refusal(holder))
                time.sleep(0.05)
            else:
                raise LeaseError(self.refusal(self.holder(connection)))
        except BaseException:
            quietly(connection.close)
            raise

        self.connection = connection

    def release(self):
        """
        Releases one holder's share: the last one closes the lease connection, which unlocks.
        """

        with Lease.guard:
            self.holders -= 1
            if self.holders > 0:
                return

            if Lease.held.get(self.key) is self:
                del Lease.held[self.key]
            if self.connection is not None:
                quietly(self.connection.close)
                self.connection = None

    def holder(self, connection):
        """
        Reads who holds the lock.

        Args:
            connection: any connection to the table's database

        Returns:
            (server pid, application name, client address, session start), None when nobody holds it
        """

        # Advisory lock keys show in pg_locks as unsigned oids
        return connection.execute(
            "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start FROM pg_locks l LEFT JOIN pg_stat_activity a "
            "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = %s::bigint::oid AND "
            "l.objid = %s::bigint::oid AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [key & 0xFFFFFFFF for key in self.lock],
        ).fetchone()

    def refusal(self, holder):
        """
        Explains a refused lease: who holds the table, and what to do.

        Args:
            holder: holder(), None when it was released meanwhile

        Returns:
            message
        """

        name = "another writer, gone since (write again)"
        if holder:
            pid, application, client, since = holder
            name = application if application and application.startswith(WRITER) else f"server process {pid} ({application or 'unknown application'})"
            details = (
                [f"server pid {pid}"] + ([f"client {client}"] if client else []) + ([f"since {since.isoformat(timespec='seconds')}"] if since else [])
            )
            name = f"{name} ({', '.join(details)})"

        return (
            f"pgvector index table {self.qualified} is being written by {name}. One process writes an index at a time: write "
            "through that process, or close the index there (or end it) and load the index again here. Searches need no lease"
        )


# Lease connections' application name starts with this, followed by the host and process id
WRITER = "txtai-muvera writer"


def writername():
    """
    Returns:
        name of this process as a writer: application name of its lease connections, writer of its generations
    """

    return f"{WRITER} {socket.gethostname()[:30]} pid {os.getpid()}"


def dedicated(args, params):
    """
    Opens a connection outside the pool for a write lease: autocommit, named after this process (pg_stat_activity shows who
    holds a table).

    Args:
        args: positional connection arguments (SQLAlchemy's dialect)
        params: keyword connection arguments

    Returns:
        psycopg connection
    """

    return psycopg.connect(*args, **{**params, "application_name": writername()}, autocommit=True)


def lockkey(text):
    """
    Advisory lock key of a name: its CRC-32 as a signed 32-bit integer.

    Args:
        text: name

    Returns:
        int
    """

    value = zlib.crc32(text.encode("utf-8"))
    return value - (1 << 32) if value >= 1 << 31 else value


def quietly(function):
    """
    Runs a clean-up step whose failure must not hide the error being handled (a lost connection fails every step).

    Args:
        function: callable
    """

    try:
        function()
    except Exception:  # pylint: disable=W0718
        pass
