"""
MuveraScoring module: the txtai scoring class of the package, a late-interaction index searched by MUVERA and re-ranked by
exact MaxSim over the token matrices stored at index time
"""

import copy
import datetime
import importlib.metadata
import logging
import math
import threading
import time

from contextlib import contextmanager

import numpy as np

from safetensors import SafetensorError
from txtai.scoring import Scoring

from ..core import fidelity, files, schema, storage
from ..core.maxsim import maxsim_flat, topk
from ..core.models import ColBERT
from ..core.models.checkpoint import SETTINGS
from ..core.models.hub import CheckpointError
from ..core.muvera import Muvera
from ..core.options import SearchOptions
from ..core.staged import Staged

logger = logging.getLogger(__name__)

# Class path written into saved configs: public API, never rename
CLASS = "txtai_muvera.MuveraScoring"

# Saved index format: version 1 was written by 0.1.0 (same files, fewer settings in the header)
FORMAT, VERSIONS = "txtai-muvera-index", (1, 2)


class MuveraScoring(Scoring):
    """
    Late-interaction index for txtai, used as a sparse index (`terms: true`). It owns the encoder, the MUVERA encoder and a
    storage engine (FDEs + token matrices). Every write is staged and committed all at once: `insert` encodes a batch in the
    caller's thread under the index ids txtai passes, `delete` stages removals, and `index` / `upsert` commit. A write that
    raises leaves the committed index exactly as it was.

    Scores: re-ranked results carry MaxSim (each query token's best match, averaged over query tokens, in [-1, 1]); FDE-only
    results carry the FDE inner product divided by repetitions x query tokens, an estimate on the same scale. txtai drops every
    result whose score is <= 0, so scores pass through `positive`, which keeps their order.
    """

    def __init__(self, config=None, models=None):
        super().__init__(config)

        # One schema checks every setting before anything is built; txtai treats a scoring config with terms as a sparse index
        schema.check(self.config)
        self.config["terms"] = True

        self.encoder = self.loadmodel()
        self.dim = self.encoder.dim
        self.muvera = Muvera(**schema.muvera(self.config, self.dim))
        self.configure()

        # Committed storage engine (None until the first index), the staged write and per-thread search options
        self.storage = None
        self.staged, self.deletes, self.failure = None, [], None

        # Batches held unpooled for calibration (see insert) and config values a calibration replaced, restored when its write
        # fails (see rollback)
        self.pending, self.chosen = None, None
        self.local = threading.local()

    def insert(self, documents, index=None, checkpoint=None):
        # After a failure txtai keeps streaming the rest of the call: nothing more is encoded, the error is raised at commit
        if self.failure is not None:
            return

        with self.failing():
            ids, texts = self.texts(documents, index or 0)
            if self.staged is None:
                self.staged = Staged(self.dim, "float32" if self.config["tokens"] == "float32" else "float16")

                # An index without a fidelity estimate holds the first documents of the write unpooled until the calibration
                # sample is full (or the write commits), measures them and, on a first build, chooses the token settings
                self.pending = [] if "estimate" not in self.config else None

            for start in range(0, len(texts), self.config["batch"]):
                chunk = texts[start : start + self.config["batch"]]
                matrices = self.encoder.encode(chunk, "data")
                batch = (ids[start : start + len(chunk)], self.muvera(matrices, "data"), matrices, self.encoder.truncated)
                if self.pending is None:
                    self.stage(*batch)
                else:
                    self.pending.append(batch)
                    if sum(len(x[0]) for x in self.pending) >= fidelity.DOCUMENTS:
                        self.flush()

    @contextmanager
    def failing(self):
        """
        Runs a step of a write: an error drops the staged write and is kept, to be raised when txtai commits (index or upsert),
        after it has streamed the whole call: its document database and id offset then advance past the failed call, so later
        writes line up with the index (docs/reliability.md). Interrupts drop the write and propagate at once.
        """

        try:
            yield
        # pylint: disable=W0718
        except Exception as error:
            self.rollback()
            self.failure = error
        except BaseException:
            self.rollback()
            raise

    def stage(self, ids, fdes, matrices, truncated):
        """
        Pools a batch's token matrices with the index's pool factor and stages it. The first batch of a write sets the stage
        up as the storage engine asks (Storage.staging): tokens encoded with its codec as they arrive, FDEs spooled in float16
        when the FDE index quantizes them.

        Args:
            ids: int64 index ids
            fdes: float32 FDE rows
            matrices: float32 token matrices, unpooled
            truncated: documents cut at the model's document length
        """

        if self.config["pool"] > 1:
            from ..core.pooling import pool

            matrices = pool(matrices, self.config["pool"])

        # The write's first batch: its token settings are final (calibrated), so the stage can encode as the engine stores
        if not len(self.staged):
            self.staged.close()
            codec, spool = storage.engine(self.config["backend"]).staging(self.config, self.dim, self.storage)
            self.staged = Staged(self.dim, "float32" if self.config["tokens"] == "float32" else "float16", codec=codec, fdes=spool)

        self.staged.add(ids, fdes, matrices, truncated)

    def flush(self):
        """
        Calibrates on the held documents, when there are enough, then stages them with the settings in force.
        """

        pending, self.pending = self.pending, None
        if pending:
            matrices = [matrix for batch in pending for matrix in batch[2]]
            if len(matrices) >= fidelity.MINIMUM:
                self.calibrate(matrices[: fidelity.DOCUMENTS])
            for batch in pending:
                self.stage(*batch)

    def delete(self, ids):
        # Staged: inside an upsert, txtai deletes replaced documents before their new versions are encoded
        self.deletes.extend(int(x) for x in ids)

    def index(self, documents=None):
        if documents:
            self.insert(documents)
        self.commitpending()
        self.raisefailure()

        staged, self.staged, self.deletes = self.staged or self.empty(), None, []
        try:
            engine = storage.create(self.config["backend"], self.config, self.config["dimensions"], self.dim)
            engine.apply(np.zeros(0, dtype=np.int64), staged)
        finally:
            staged.close()

        self.warn(staged)
        self.config["build"] = build()
        previous, self.storage, self.chosen = self.storage, engine, None
        if previous is not None and previous is not engine:
            previous.close()

    def upsert(self, documents=None):
        if documents:
            self.insert(documents)
        self.commitpending()
        self.raisefailure()

        if self.storage is None:
            self.index()
            return

        staged, deletes, self.staged, self.deletes = self.staged or self.empty(), self.deletes, None, []
        try:
            self.storage.apply(np.array(deletes, dtype=np.int64), staged)
        finally:
            staged.close()

        self.warn(staged)

    def commitpending(self):
        """
        Stages the documents still held for calibration when a write commits, as insert would: an error is raised by the commit.
        """

        if self.pending and self.failure is None:
            with self.failing():
                self.flush()
        self.pending = None

    def rollback(self):
        """
        Drops the staged write: documents encoded and deletes staged since the last commit. Called when a write fails.
        """

        if self.staged is not None:
            self.staged.close()
        self.staged, self.deletes, self.pending = None, [], None

        # Settings chosen by this write's calibration are dropped with it while nothing is committed
        if self.chosen is not None and self.storage is None:
            for key in (*fidelity.KEYS, "estimate"):
                self.config.pop(key, None)
            self.config.update(self.chosen)
            self.chosen = None

    def calibrate(self, matrices):
        """
        Measures the fidelity of the token settings on the first documents of a write (up to fidelity.DOCUMENTS, unpooled),
        with pseudo-queries cut from them: how much of exact MaxSim's nDCG@10 the stored tokens keep (core/fidelity.py). The
        first write of an index with a fidelity target and no token settings of its own first chooses them: the smallest rung of
        the ladder that reaches the target. Writes of fewer than fidelity.MINIMUM documents with tokens measure nothing; the next
        larger write measures the settings in place. A measurement that fails is logged and leaves the settings as they are:
        the write goes on.

        Args:
            matrices: float32 token matrices, unpooled
        """

        if sum(1 for matrix in matrices if len(matrix)) < fidelity.MINIMUM:
            return

        start = time.perf_counter()
        choose = self.config.get("choose") and self.storage is None
        try:
            sample = fidelity.Sample(matrices)
            if choose:
                rung, tried = fidelity.choose(sample, self.config["fidelity"])
            else:
                rung = {key: self.config[key] for key in ("pool", "tokens")}
                if isinstance(self.config.get(rung["tokens"]), dict):
                    rung[rung["tokens"]] = self.config[rung["tokens"]]
                tried = [(rung, fidelity.measure(sample, rung))]
        # pylint: disable=W0718
        except Exception as error:
            logger.warning("Fidelity not measured, token settings kept as configured: %s: %s", type(error).__name__, error)
            return

        if choose:
            self.chosen = {key: copy.deepcopy(self.config[key]) for key in (*fidelity.KEYS, "choose") if key in self.config}
            for key in fidelity.KEYS:
                self.config.pop(key, None)
            self.config.update(copy.deepcopy(rung))
            self.config["choose"] = False

        result = dict(next(x for r, x in tried if r == rung))
        self.config["estimate"] = fidelity.report(
            rung, result, tried if choose else [], len(sample), len(sample.queries), time.perf_counter() - start
        )
        logger.info("%s", fidelity.describe(self.config["estimate"], self.config.get("fidelity") if choose else None))

    def raisefailure(self):
        """
        Raises the error that stopped the staged write, if any, after dropping the write.
        """

        if self.failure is not None:
            error, self.failure = self.failure, None
            self.rollback()
            raise error

    def settle(self):
        """
        Runs before every read. A write still staged here was abandoned (txtai raised before committing it): drop it. Deletes
        staged without documents come from `Embeddings.delete`, which never commits: apply them.
        """

        if self.staged is not None or self.failure is not None:
            self.rollback()
            self.failure = None
        elif self.deletes and self.storage is not None:
            deletes, self.deletes = np.array(self.deletes, dtype=np.int64), []
            self.storage.apply(deletes, self.empty())

    def weights(self, tokens):
        return None

    def search(self, query, limit=3):
        return self.batchsearch([query], limit)[0]

    def batchsearch(self, queries, limit=3, threads=True):
        """
        Searches: MUVERA candidates, then exact MaxSim over their stored tokens (unless re-ranking is off).

        Args:
            queries: query texts
            limit: maximum results per query
            threads: unused

        Returns:
            list of (index id, score) per query, best first
        """

        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")

        self.settle()
        queries = list(queries)
        options = self.options()
        if not limit or not queries or not self.count():
            return [[] for _ in queries]

        tokens = self.encoder.encode(queries, "query")
        fdes = self.muvera(tokens, "query")
        rerank = options.rerank if options.rerank is not None else self.config["rerank"]
        candidates = max(options.candidates or self.config["candidates"], limit) if rerank else limit
        scores, ids = self.storage.search(fdes, candidates, options)

        results = []
        for x, (row, uids) in enumerate(zip(scores, ids)):
            valid = uids >= 0
            row, uids = row[valid], uids[valid]
            if rerank and len(uids):
                exact = maxsim_flat(tokens[x], *self.storage.gather(uids, decode=False))
                order = topk(exact, limit)[0]
                results.append([(int(uids[i]), positive(exact[i])) for i in order])
            else:
                # The FDE inner product estimates the MaxSim sum over query tokens in every repetition
                scale = self.muvera.repetitions * max(len(tokens[x]), 1)
                results.append([(int(uid), positive(score / scale)) for uid, score in zip(uids[:limit], row[:limit])])

        return results

    @contextmanager
    def searching(self, options):
        """
        Sets per-call search options for the current thread, for the duration of the block (txtai's search has no route for
        extra arguments).

        Args:
            options: SearchOptions
        """

        previous = getattr(self.local, "options", SearchOptions())
        self.local.options = previous.update(options)
        try:
            yield
        finally:
            self.local.options = previous

    def options(self):
        """
        Returns:
            SearchOptions of the current thread
        """

        return getattr(self.local, "options", SearchOptions())

    def count(self):
        self.settle()
        return self.storage.count() if self.storage is not None else 0

    def load(self, path):
        # Recover from a crash between the two renames of a save, then check the header against the config
        files.restore(path)
        header = files.readjson(f"{path}/header.json", "txtai-muvera index header")
        if header.get("format") != FORMAT or header.get("version") not in VERSIONS:
            raise ValueError(
                f"txtai-muvera index at {path} has version {header.get('version')!r} (format {header.get('format')!r}); this "
                f"txtai-muvera reads {FORMAT!r} versions {', '.join(map(str, VERSIONS))}: rebuild the index with this version"
            )
        for key in ("dimensions", "fingerprint"):
            if self.config.get(key) is not None and header.get(key) is not None and header.get(key) != self.config.get(key):
                raise ValueError(f"Index at {path} was built with {key} {header.get(key)!r} but the config says {self.config.get(key)!r}")

        engine = storage.create(self.config["backend"], self.config, self.config["dimensions"], self.dim)
        engine.load(path)

        # A database engine is the source of truth: writes after the save (this process or others) are committed there
        if engine.files and engine.count() != header["documents"]:
            raise ValueError(f"Index at {path} is inconsistent: header says {header['documents']} documents, storage has {engine.count()}")

        self.storage = engine

    def save(self, path):
        """
        Saves to a directory at path: written to a new sibling directory first and swapped in by renames, so a crash mid-save
        leaves the previous save loadable and files that a loaded index memory-maps are never written over.

        Args:
            path: output directory
        """

        self.settle()
        if self.storage is None:
            raise ValueError("This late-interaction index holds nothing to save: no index() call has completed on it")

        temp = files.tempdir(path)
        try:
            self.storage.save(temp)
            header = {
                "format": FORMAT,
                "version": VERSIONS[-1],
                "documents": self.storage.count(),
                "dimensions": self.config["dimensions"],
                "fingerprint": self.config["fingerprint"],
                "backend": self.config["backend"],
                "tokens": self.config["tokens"],
                "pool": self.config["pool"],
            }
            files.writeheader(temp, header)
            files.replacedir(temp, path)
        except BaseException:
            files.remove(temp)
            raise

    def close(self):
        self.rollback()
        if self.storage is not None:
            self.storage.close()
        self.storage, self.encoder = None, None

    def issparse(self):
        return True

    def isnormalized(self):
        # Scores are on the MaxSim scale: txtai must not rescale them, and hybrid search fuses them by a convex mix
        return True

    def isbayes(self):
        return False

    @property
    def store(self):
        """
        Returns:
            token store of the file engine (None for other engines), with staged deletes applied
        """

        self.settle()
        return getattr(self.storage, "store", None)

    @property
    def fdes(self):
        """
        Returns:
            FDE index of the file engine (None for other engines), with staged deletes applied
        """

        self.settle()
        return getattr(self.storage, "fdes", None)

    def loadmodel(self):
        """
        Loads the late-interaction encoder named by the config, checking it against the fingerprint of a saved index.

        Returns:
            ColBERT
        """

        path = self.config["path"]
        try:
            model = ColBERT(path, **self.config.get("vectors", {}))
        except CheckpointError:
            raise
        except (RuntimeError, OSError, SafetensorError) as error:
            # Weights that do not match their config fail deep inside transformers or safetensors: name the checkpoint
            raise ValueError(f"Cannot load checkpoint at {path}: {type(error).__name__}: {str(error)[:500]}") from error

        checkheads(model, path)

        # A saved index must be searched with the model that built it: the checkpoint at path may have changed since
        fingerprint = self.config.get("fingerprint")
        if fingerprint and fingerprint != model.fingerprint:
            raise ValueError(
                f"Checkpoint at {path} has fingerprint {model.fingerprint!r} but this index was built with {fingerprint!r}: "
                "load the index with the checkpoint that built it, or rebuild the index"
            )

        return model

    def configure(self):
        """
        Writes the resolved model and MUVERA settings into the config, so the saved config.json says how the index was built.
        """

        vectors = {key: value for key, value in self.encoder.settings.items() if key in SETTINGS}
        vectors["compatible"] = self.encoder.compatible
        self.config["vectors"] = {**self.config.get("vectors", {}), **vectors}
        self.config["muvera"] = self.muvera.config
        self.config["fingerprint"] = self.encoder.fingerprint
        self.config["dim"] = self.dim
        self.config["dimensions"] = self.muvera.dimensions(self.dim)

    def texts(self, documents, index):
        """
        Index ids and texts of a batch, numbered like txtai's document database numbers its sections: from the batch offset,
        one id per document whose text is not None. Every text is checked before any is encoded.

        Args:
            documents: list of (id, data, tags)
            index: index id of the batch's first section

        Returns:
            (int64 ids, texts)
        """

        ids, texts = [], []
        for uid, document, _ in documents:
            checkid(uid)
            if isinstance(document, dict):
                document = document.get(self.text) if self.text in document else document.get(self.object)

            if document is None:
                continue

            text = " ".join(document) if isinstance(document, list) and all(isinstance(x, str) for x in document) else document
            if not isinstance(text, str):
                raise TypeError(f"Document {uid!r} has {type(text).__name__} text {shorten(text)}, expected str")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"Document {uid!r} has text that is not valid Unicode ({error.reason} at {error.start}): {shorten(text)}") from error

            ids.append(index)
            texts.append(text)
            index += 1

        return np.array(ids, dtype=np.int64), texts

    def empty(self):
        """
        Returns:
            an empty Staged
        """

        return Staged(self.dim)

    def warn(self, staged):
        """
        Tokens past the model's document length are not indexed: say so, since MaxSim never sees them.

        Args:
            staged: committed Staged
        """

        if staged.truncated:
            length = self.config["vectors"].get("document_length")
            logger.warning("%d of %d documents were cut at the model's document length (%s tokens)", staged.truncated, len(staged), length)


def build():
    """
    Build record of a new index, like txtai's own dense indexes keep: creation time (ISO 8601, UTC) and the versions that built
    it. Saved in config.json; `txtai-muvera info` shows it.

    Returns:
        dict
    """

    # pylint: disable=C0415
    import txtai_muvera

    return {
        "create": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "txtai": importlib.metadata.version("txtai"),
        "txtai-muvera": txtai_muvera.__version__,
    }


def positive(score):
    """
    Maps a score to a strictly positive value with the same order, so that txtai keeps every result: positive scores move by
    less than 1e-6, scores <= 0 land in (0, 5e-7].

    Args:
        score: MaxSim-scaled score

    Returns:
        float
    """

    # A Python float: database drivers (psycopg2) cannot store numpy scalars
    score = float(score)
    return max(score, 0.0) + 1e-6 / (1.0 + math.exp(min(-score, 700.0))) if math.isfinite(score) else 1e-12


def checkid(uid):
    """
    Checks a document id. txtai stores any id, but one that never equals itself (NaN), a bool (True is 1) or bytes cannot be
    deleted or replaced later: upserting it again duplicates the document.

    Args:
        uid: document id
    """

    if isinstance(uid, bool) or isinstance(uid, (bytes, bytearray)) or not isinstance(uid, (str, int, float)):
        raise TypeError(f"Document id {shorten(uid)} is {type(uid).__name__}, expected str or int")
    if isinstance(uid, float) and not math.isfinite(uid):
        raise ValueError(f"Document id {uid!r} is not a finite number: it could never be deleted or replaced")


def checkheads(model, path):
    """
    Checks that the projection heads of a loaded checkpoint chain from the backbone's hidden size, so that a checkpoint with
    mismatched dimensions fails at load with a message naming them instead of deep inside torch at the first encoding.

    Args:
        model: ColBERT
        path: checkpoint path, for the message
    """

    size = int(model.model.config.hidden_size)
    for x, (weight, _, residual, _) in enumerate(model.heads):
        if weight.ndim != 2 or weight.shape[1] != size or (residual is not None and tuple(residual.shape) != tuple(weight.shape)):
            raise ValueError(
                f"Checkpoint at {path} has projection head {x} with weight shape {tuple(weight.shape)}, "
                f"expected (dim, {size}) to follow a layer of size {size}"
            )
        size = int(weight.shape[0])


def shorten(value, length=40):
    """
    Short printable form of a value for error messages.

    Args:
        value: any value
        length: maximum characters

    Returns:
        str
    """

    text = repr(value)
    return text if len(text) <= length else f"{text[:length]}..."
