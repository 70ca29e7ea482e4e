"""
PGVector module: the storage engine that keeps FDEs and token matrices in PostgreSQL with pgvector
"""

import json
import os
import re
import threading

from contextlib import contextmanager

import numpy as np

# Conditional import
try:
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector
    from psycopg import sql
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    PGVECTOR = True
except ImportError:
    PGVECTOR = False

from .files import readheader, writeheader
from .storage import Storage

# Saved header format
FORMAT, VERSION = "txtai-muvera-pgvector", 1

# Token codecs this engine stores: bytes per token value (int8 rows also keep a float32 scale each)
CODECS = {"float32": 4, "float16": 2, "int8": 1}

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


class PGVectorStorage(Storage):
    """
    One PostgreSQL table keyed by index id: `id bigint`, `fde halfvec(dimensions)`, `tokens bytea` (the token matrix in the
    index's codec, rows back to back) and, for FDEs over 4,000 dims, `code halfvec(sketch)`. A write is one transaction.

    pgvector's HNSW indexes halfvec up to 4,000 dims. Smaller FDEs are indexed as they are (`halfvec_ip_ops`). Larger ones are
    count-sketched (a fixed random sign and bucket per FDE dim, inner products kept in expectation) to `sketch` dims and
    indexed; `oversample` x limit sketch candidates are then re-scored by the exact FDE inner product in SQL. On SciFact FDEs
    (10,240 dims) a 4,000-dim sketch with oversample 4 keeps 94% of the exact FDE top 100; binary codes (`binary_quantize`,
    Hamming) kept 37%. The table's comment holds its settings as JSON.

    Settings (the `pgvector` sub-dict of the scoring config): `url` (SQLAlchemy URL, else env ANN_URL), `schema`, `table`
    (default `muvera`), `index` (auto, sketch, halfvec, flat), `sketch` (dims, <= 4,000), `oversample` (sketch candidates per
    requested candidate), `m`, `efconstruction`, `efsearch` (HNSW). The token codec is the scoring config's `tokens`.
    """

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
        self.codec = config.get("tokens", "float16")
        if self.codec not in CODECS:
            raise ValueError(f"Unknown tokens {self.codec!r} for the pgvector backend, accepted: {', '.join(CODECS)}")

        if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)) or not 1 <= dimensions <= HALFVEC:
            raise ValueError(f"FDE dimensions must be 1..{HALFVEC} for the pgvector backend (halfvec), got {dimensions!r}: lower muvera.final")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"Token dim must be a positive integer, got {dim!r}")
        self.dimensions, self.dim = int(dimensions), int(dim)

        self.schema = self.identifier("schema", self.setting("schema", None), True)
        self.table = self.identifier("table", self.setting("table", "muvera"))
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
        self.m = self.positive("m", self.setting("m", 16))
        self.efconstruction = self.positive("efconstruction", self.setting("efconstruction", 64))
        self.efsearch = self.positive("efsearch", self.setting("efsearch", 40))

        # Resolved values go back into the config (the url stays where the user put it: config or environment)
        settings.update(schema=self.schema, table=self.table, index=self.index, sketch=self.sketch, oversample=self.oversample)
        settings.update(m=self.m, efconstruction=self.efconstruction, efsearch=self.efsearch)
        self.buckets, self.signs = sketching(self.dimensions, self.sketch) if self.sketch else (None, None)
        self.engine = self.connect(settings.get("url") or os.environ.get("ANN_URL"))

        # A new engine is a new index: its first write replaces the table (in that write's transaction); a loaded one appends
        self.fresh, self.ready = True, False

        # Token rows fetched with the last search of each thread, so the re-rank reads the snapshot its candidates came from
        self.local = threading.local()

    def apply(self, deletes, batches):
        deletes = np.asarray(deletes, dtype=np.int64).reshape(-1)
        self.local.prefetched = {}

        with self.connection() as conn:
            try:
                with conn.cursor() as cursor:
                    if self.fresh:
                        self.create(cursor)
                    elif len(deletes):
                        cursor.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self.name()), (deletes.tolist(),))

                    # Binary COPY: no text round trip for 10k-dim FDEs and token bytes
                    columns = "id, fde, tokens, code" if self.sketch else "id, fde, tokens"
                    copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(self.name(), sql.SQL(columns))
                    with cursor.copy(copy) as writer:
                        writer.set_types(["int8", "halfvec", "bytea", "halfvec"][: 4 if self.sketch else 3])
                        for ids, fdes, matrices in batches:
                            ids, fdes, tokens, codes = self.rows(ids, fdes, matrices)
                            for x, (uid, fde, row) in enumerate(zip(ids, fdes, tokens)):
                                writer.write_row((uid, HalfVector(fde), row, HalfVector(codes[x])) if self.sketch else (uid, HalfVector(fde), row))

                    # Bulk build: the HNSW index of a new table is built once, after its rows are in
                    if self.fresh:
                        self.build(cursor)

                conn.commit()
            except BaseException:
                conn.rollback()
                raise

        self.fresh, self.ready = False, True

    def search(self, queries, limit, options):
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimensions:
            raise ValueError(f"queries must be (n, {self.dimensions}) FDEs, got shape {queries.shape}")
        if not np.isfinite(queries).all():
            raise ValueError("queries contain NaN or infinite values")

        limit = self.positive("limit", limit)
        scores, ids = np.zeros((len(queries), limit), dtype=np.float32), np.full((len(queries), limit), -1, dtype=np.int64)
        self.local.prefetched = {}
        if not self.ready or not len(queries):
            return scores, ids

        # Candidates: binary codes over-fetch, then every query re-scores its candidates by the exact FDE inner product
        candidates = limit * self.oversample
        efsearch = min(max(options.efsearch or self.efsearch, candidates), EFSEARCH)
        prefetch = options.rerank is not False and self.config.get("rerank", True) is not False
        statement = self.query(candidates, prefetch)

        with self.connection() as conn:
            try:
                with conn.cursor() as cursor:
                    # One snapshot for every query of the call; SET LOCAL ends with the transaction
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    if self.index != "flat":
                        cursor.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(efsearch)))
                        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")

                        # The planner prices a scan of out-of-line vectors far too low and skips the HNSW index on small tables
                        cursor.execute("SET LOCAL enable_seqscan = off")
                    codes = self.code(queries) if self.sketch else queries
                    for x, query in enumerate(queries):
                        cursor.execute(statement, {"query": HalfVector(query), "code": HalfVector(codes[x]), "candidates": candidates, "limit": limit})
                        for y, row in enumerate(cursor.fetchall()):
                            ids[x, y], scores[x, y] = row[0], row[1]
                            if prefetch:
                                self.local.prefetched[row[0]] = row[2]
            finally:
                conn.rollback()

        return scores, ids

    def gather(self, ids):
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = getattr(self.local, "prefetched", {})

        missing = [uid for uid in ids.tolist() if uid not in rows]
        if missing:
            rows = {**rows, **self.fetch(missing)}
            absent = [uid for uid in missing if uid not in rows]
            if absent:
                raise KeyError(f"ids not stored: {absent[:10]}")

        return self.decode([rows[uid] for uid in ids.tolist()])

    def count(self):
        if not self.ready:
            return 0

        with self.connection() as conn:
            try:
                return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.name())).fetchone()[0]
            finally:
                conn.rollback()

    def ids(self):
        if not self.ready:
            return np.zeros(0, dtype=np.int64)

        with self.connection() as conn:
            try:
                rows = conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(self.name())).fetchall()
            finally:
                conn.rollback()

        return np.array([row[0] for row in rows], dtype=np.int64)

    def nbytes(self):
        """
        Returns:
            bytes the table, its TOAST data and its indexes take in the database
        """

        if not self.ready:
            return 0

        with self.connection() as conn:
            try:
                return conn.execute("SELECT pg_total_relation_size(%s::regclass)", (self.qualified(),)).fetchone()[0]
            finally:
                conn.rollback()

    def save(self, path):
        # An index saved before its first write is an empty table
        if self.fresh:
            self.apply(np.zeros(0, dtype=np.int64), [])

        # Data lives in the database: the folder holds only what the table must match
        path = os.path.join(path, "pgvector")
        os.makedirs(path, exist_ok=True)
        writeheader(path, {"format": FORMAT, "version": VERSION, **self.layout()})

    def load(self, path):
        path = os.path.join(path, "pgvector")
        header = readheader(os.path.join(path, "header.json"), "pgvector storage", FORMAT, VERSION)
        self.check(header, f"Saved pgvector storage at {path}")

        stored = self.describe()
        if stored is None:
            raise ValueError(f"Table {self.qualified()} not found in the database: the index saved at {path} needs it")
        self.check(stored, f"Table {self.qualified()}")

        self.fresh, self.ready = False, True

    def close(self):
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

        layout = {"schema": self.schema, "table": self.table, "dimensions": self.dimensions, "dim": self.dim, "tokens": self.codec, "index": self.index}
        return {**layout, "sketch": self.sketch, "seed": SEED if self.sketch else None}

    def check(self, stored, what):
        """
        Checks stored settings against this engine's.

        Args:
            stored: settings dict (header or table comment)
            what: what holds them, for error messages
        """

        for key, value in self.layout().items():
            if key != "schema" and stored.get(key) != value:
                raise ValueError(f"{what} has {key} {stored.get(key)!r}, this index expects {value!r}")

    def connect(self, url):
        """
        Creates the SQLAlchemy engine (connection pool) and makes sure pgvector is installed.

        Args:
            url: SQLAlchemy URL

        Returns:
            engine
        """

        if not url:
            raise ValueError("pgvector backend needs a url: set pgvector.url (postgresql+psycopg2://user@host/db) or the ANN_URL environment variable")

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
            with engine.connect():
                pass
        except Exception as error:
            engine.dispose()
            raise ConnectionError(f"Unable to connect to PostgreSQL at {parsed.render_as_string(hide_password=True)}: {error}") from error

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

    def create(self, cursor):
        """
        Replaces the table with a new empty one (inside the caller's transaction).

        Args:
            cursor: psycopg cursor
        """

        if self.schema:
            cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))

        name = self.name()
        cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        code = sql.SQL(", code halfvec({}) NOT NULL").format(sql.Literal(self.sketch)) if self.sketch else sql.SQL("")
        cursor.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, fde halfvec({}) NOT NULL, tokens bytea NOT NULL{})").format(name, sql.Literal(self.dimensions), code)
        )

        # Token bytes do not compress: store them out of line without trying
        cursor.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN tokens SET STORAGE EXTERNAL").format(name))
        cursor.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(name, sql.Literal(json.dumps({"format": FORMAT, "version": VERSION, **self.layout()}))))

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
                sql.Identifier(f"{self.table}_fde"), self.name(), sql.Identifier("code" if self.sketch else "fde"), sql.Literal(self.m), sql.Literal(self.efconstruction)
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

    def rows(self, ids, fdes, matrices):
        """
        Checks one batch and turns it into rows.

        Args:
            ids: int64 (n,)
            fdes: float32 (n, dimensions)
            matrices: list of float32 (t, dim)

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

        return ids.astype(np.int64).tolist(), half, [self.encode(matrix) for matrix in matrices], codes

    def encode(self, matrix):
        """
        Encodes one token matrix in the index's codec.

        Args:
            matrix: float32 (t, dim)

        Returns:
            bytes
        """

        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ValueError(f"Token matrices must be (tokens, {self.dim}), got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError("Token matrix contains NaN or infinite values")

        if self.codec == "int8":
            # Same rule as the token store: scale = max|x| / 127 per row (1 for zero rows), then the int8 codes
            scale = np.abs(matrix).max(axis=1, initial=0.0) / 127
            scale[scale == 0] = 1
            codes = np.clip(np.round(matrix / scale[:, None]), -127, 127).astype(np.int8)
            return scale.astype("<f4").tobytes() + codes.tobytes()

        return matrix.astype("<f2" if self.codec == "float16" else "<f4").tobytes()

    def decode(self, rows):
        """
        Decodes token bytes into the flat form of maxsim_flat.

        Args:
            rows: list of bytes

        Returns:
            (tokens (T, dim), offsets (len + 1,) int64, scale (T,) float32 or None)
        """

        width = self.dim * CODECS[self.codec] + (4 if self.codec == "int8" else 0)
        lengths = np.array([len(row) // width for row in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

        if self.codec == "int8":
            scales = [np.frombuffer(row, dtype="<f4", count=n) for row, n in zip(rows, lengths)]
            codes = [np.frombuffer(row, dtype=np.int8, offset=n * 4).reshape(n, self.dim) for row, n in zip(rows, lengths)]
            scale = np.concatenate(scales).astype(np.float32) if rows else np.zeros(0, dtype=np.float32)
            tokens = np.concatenate(codes) if rows else np.zeros((0, self.dim), dtype=np.int8)
            return tokens, offsets, scale

        dtype = np.float16 if self.codec == "float16" else np.float32
        parts = [np.frombuffer(row, dtype=np.dtype(dtype).newbyteorder("<")).reshape(-1, self.dim) for row in rows]
        tokens = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros((0, self.dim), dtype=dtype)
        return tokens, offsets, None

    def fetch(self, ids):
        """
        Reads token bytes of ids.

        Args:
            ids: list of ids

        Returns:
            {id: bytes}
        """

        with self.connection() as conn:
            try:
                rows = conn.execute(sql.SQL("SELECT id, tokens FROM {} WHERE id = ANY(%s)").format(self.name()), (list(ids),)).fetchall()
            finally:
                conn.rollback()

        return {uid: bytes(tokens) for uid, tokens in rows}

    def describe(self):
        """
        Reads the stored table's settings.

        Returns:
            settings dict from the table comment, or None when the table does not exist
        """

        with self.connection() as conn:
            try:
                row = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class'), to_regclass(%s) IS NOT NULL", (self.qualified(),) * 2).fetchone()
            finally:
                conn.rollback()

        if not row[1]:
            return None

        try:
            return json.loads(row[0] or "")
        except ValueError as error:
            raise ValueError(f"Table {self.qualified()} is not a txtai-muvera pgvector table (comment: {row[0]!r})") from error

    def name(self):
        """
        Returns:
            quoted table name
        """

        return sql.Identifier(self.schema, self.table) if self.schema else sql.Identifier(self.table)

    def qualified(self):
        """
        Returns:
            quoted table name as text, for to_regclass
        """

        return f'"{self.schema}"."{self.table}"' if self.schema else f'"{self.table}"'

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
            raise ValueError(f"pgvector {name} must be a plain SQL identifier (letters, digits, underscores, 1-59 chars, no leading digit), got {value!r}")

        return value

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
