"""
PGVector module: the storage engine that keeps FDEs and token matrices in PostgreSQL with pgvector
"""

import copy
import io
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

from . import codecs as codecmodule
from .files import readjson, writeheader
from .filestorage import SAMPLE
from .staged import Staged
from .storage import Storage

# Saved header and table comment format. Version 2 stores every codec's rows as fixed-width token records (the codec's parts
# back to back, per token); version 1 stored int8 rows as all scales, then all codes. float32 / float16 rows are the same bytes
# in both, so version 1 tables of those codecs still load.
FORMAT, VERSION, VERSIONS = "txtai-muvera-pgvector", 2, (1, 2)

# Trained codec state (residual centroids, PQ codebooks) of every index in a schema: one bytea row per state array, keyed by
# the index's table name, plus a "config" row with the codec's resolved options
STATE = "muvera_codecs"

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
    index's codec: one fixed-width record of the codec's parts per token, back to back) and, for FDEs over 4,000 dims,
    `code halfvec(sketch)`. A write is one transaction.

    Every codec of codecs.CODECS is stored. Codecs that need training (residual, pq) train on a sample of the first write's
    tokens (an index built empty: of the first write that has tokens); their state goes to the `muvera_codecs` table of the same
    schema, keyed by table name, in that write's transaction. Later writes (upserts) keep the trained state, as the file engine
    does, so stored codes never change.

    pgvector's HNSW indexes halfvec up to 4,000 dims. Smaller FDEs are indexed as they are (`halfvec_ip_ops`). Larger ones are
    count-sketched (a fixed random sign and bucket per FDE dim, inner products kept in expectation) to `sketch` dims and
    indexed; `oversample` x limit sketch candidates are then re-scored by the exact FDE inner product in SQL. On SciFact FDEs
    (10,240 dims) a 4,000-dim sketch with oversample 4 keeps 94% of the exact FDE top 100; binary codes (`binary_quantize`,
    Hamming) kept 37%. The table's comment holds its settings as JSON.

    Settings (the `pgvector` sub-dict of the scoring config): `url` (SQLAlchemy URL, else env ANN_URL), `schema`, `table`
    (default `muvera`), `index` (auto, sketch, halfvec, flat), `sketch` (dims, <= 4,000), `oversample` (sketch candidates per
    requested candidate), `m`, `efconstruction`, `efsearch` (HNSW). The token codec is the scoring config's `tokens`, its
    options the sub-dict named after it (e.g. `residual: {bits: 2}`).
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
        self.tokens = config.get("tokens", "float16")
        if not isinstance(self.tokens, str) or self.tokens not in codecmodule.CODECS:
            raise ValueError(f"Unknown tokens {self.tokens!r} for the pgvector backend, accepted: {', '.join(codecmodule.CODECS)}")

        if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)) or not 1 <= dimensions <= HALFVEC:
            raise ValueError(f"FDE dimensions must be 1..{HALFVEC} for the pgvector backend (halfvec), got {dimensions!r}: lower muvera.final")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"Token dim must be a positive integer, got {dim!r}")
        self.dimensions, self.dim = int(dimensions), int(dim)

        # Token codec: untrained until the first write with tokens when it needs training (residual, pq)
        options = config.get(self.tokens) if isinstance(config.get(self.tokens), dict) else {}
        self.codec = codecmodule.create(self.tokens, self.dim, **options)

        self.schema = self.identifier("schema", self.setting("schema", None), True)
        self.table = self.identifier("table", self.setting("table", "muvera"))
        if self.table == STATE:
            raise ValueError(f"pgvector table {STATE!r} is reserved for trained codec state: choose another table name")
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

        # A codec that needs training learns on a sample of this write's tokens: the write is staged first (batches are read
        # once). The trained copy replaces the engine's codec only when the write commits.
        codec, staged = self.codec, None
        if not codec.trained:
            staged = batches if isinstance(batches, Staged) else self.stage(batches)
            if staged.store.tokens:
                codec = copy.deepcopy(self.codec)
                codec.train(staged.sample(SAMPLE))

        try:
            self.write(deletes, staged if staged is not None else batches, codec)
        finally:
            if staged is not None and staged is not batches:
                staged.close()

        self.codec = codec
        self.fresh, self.ready = False, True

    def write(self, deletes, batches, codec):
        """
        Runs one write in one transaction: the new table (first write), the deletes, the codec state (when it was trained by
        this write), the rows and the candidate index (first write). Rolls back on any error.

        Args:
            deletes: int64 ids to remove
            batches: iterable of (ids, fdes, matrices)
            codec: codec that encodes the rows
        """

        with self.connection() as conn:
            try:
                with conn.cursor() as cursor:
                    if self.fresh:
                        self.create(cursor)
                    elif len(deletes):
                        cursor.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self.name()), (deletes.tolist(),))

                    if codec is not self.codec:
                        self.savestate(cursor, codec)

                    # Binary COPY: no text round trip for 10k-dim FDEs and token bytes
                    columns = "id, fde, tokens, code" if self.sketch else "id, fde, tokens"
                    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(self.name(), sql.SQL(columns))
                    with cursor.copy(statement) as writer:
                        writer.set_types(["int8", "halfvec", "bytea", "halfvec"][: 4 if self.sketch else 3])
                        for ids, fdes, matrices in batches:
                            ids, fdes, tokens, codes = self.rows(ids, fdes, matrices, codec)
                            for x, (uid, fde, row) in enumerate(zip(ids, fdes, tokens)):
                                writer.write_row((uid, HalfVector(fde), row, HalfVector(codes[x])) if self.sketch else (uid, HalfVector(fde), row))

                    # Bulk build: the HNSW index of a new table is built once, after its rows are in
                    if self.fresh:
                        self.build(cursor)

                conn.commit()
            except BaseException:
                conn.rollback()
                raise

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
        header = readjson(os.path.join(path, "header.json"), "pgvector storage header")
        self.check(header, f"Saved pgvector storage at {path}")

        stored = self.describe()
        if stored is None:
            raise ValueError(f"Table {self.qualified()} not found in the database: the index saved at {path} needs it")
        self.check(stored, f"Table {self.qualified()}")

        self.codec = self.loadstate()
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

        layout = {"schema": self.schema, "table": self.table, "dimensions": self.dimensions, "dim": self.dim, "tokens": self.tokens, "index": self.index}
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

        with self.connection() as conn:
            try:
                rows = []
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.qualified(STATE),)).fetchone()[0]:
                    statement = sql.SQL("SELECT part, value FROM {} WHERE tablename = %s").format(self.name(STATE))
                    rows = conn.execute(statement, (self.table,)).fetchall()
                stored = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE length(tokens) > 0)").format(self.name())).fetchone()[0]
            finally:
                conn.rollback()

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
