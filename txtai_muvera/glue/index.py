"""
MuveraIndex module: txtai index backend holding the FDE index and the token store, re-ranking with exact MaxSim
"""

import logging
import os
import threading

from contextlib import contextmanager

import numpy as np

from txtai.ann import ANN

from ..core import files
from ..core.ann import FDEIndex
from ..core.maxsim import maxsim_flat, topk
from ..core.store import TokenStore

logger = logging.getLogger(__name__)

# Saved index format, checked on load
FORMAT, VERSION = "txtai-muvera-index", 1

# Default number of FDE candidates re-ranked with exact MaxSim
CANDIDATES = 100


class MuveraIndex(ANN):
    """
    Sparse ANN backend for txtai's Sparse scoring. Stores one MUVERA FDE per document in a faiss index and the document's token
    matrix in a token store, both keyed by txtai index ids. Searches find FDE candidates, then re-rank them by exact MaxSim over
    the stored tokens (no document is ever re-encoded).

    Scores: re-ranked results carry MaxSim (each query token's best match, averaged over query tokens, in [-1, 1]); FDE-only
    results carry the FDE inner product divided by repetitions x query tokens, an estimate on the same scale. txtai drops
    every result whose score is <= 0, so scores pass through `positive`, which changes no positive score by more than 1e-6
    and keeps the order of all scores.
    """

    def __init__(self, config):
        super().__init__(config)

        self.fdes, self.store = None, None

        # Per-call search options (see Options)
        self.options = Options()

    def index(self, embeddings):
        self.config["offset"] = 0
        self.check(embeddings)
        self.configure(embeddings)

        # Build FDE index and adopt the pass's token store (its ids 0..n-1 are the index ids of a fresh index)
        # "type" in the saved settings records what "auto" chose; the constructor takes the rest
        options = {key: value for key, value in self.config.get("ann", {}).items() if key != "type"}
        vectors = embeddings.vectors()
        self.fdes = FDEIndex(vectors.shape[1], **options)
        self.fdes.index(np.arange(len(embeddings)), vectors)
        self.store = embeddings.store

        self.config["ann"] = self.fdes.config
        self.config["offset"] = embeddings.streamed
        self.metadata(self.config["ann"])

    def append(self, embeddings):
        self.check(embeddings)

        # New documents continue after the last index id ever assigned, as txtai's own index ids do
        offset = self.config["offset"]
        ids = np.arange(offset, offset + len(embeddings))
        vectors = embeddings.vectors()

        # Copy tokens first: if it fails, the FDE index is untouched and the partial rows are removed
        source = embeddings.store
        try:
            for start in range(0, len(ids), 1024):
                rows = source.ids[start : start + 1024]
                tokens, offsets, scale = source.gather(rows)
                tokens = tokens.astype(np.float32) * scale[:, None] if scale is not None else tokens
                self.store.add(rows + offset, np.split(tokens, offsets[1:-1]))
        except Exception:
            self.store.delete(ids)
            raise

        self.fdes.add(ids, vectors)
        self.config["offset"] = offset + embeddings.streamed
        self.metadata()

    def delete(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        self.fdes.delete(ids)
        self.store.delete(ids)

    def search(self, queries, limit, candidates=None, efsearch=None, nprobe=None, rerank=None):
        """
        Searches the index.

        Args:
            queries: Queries array from LateVectors (FDE rows with token matrices) or a plain FDE array
            limit: maximum results per query
            candidates: FDE candidates re-ranked per query, defaults to the index setting (100)
            efsearch: HNSW search depth, defaults to the index setting
            nprobe: IVF cells probed, defaults to the index setting
            rerank: re-rank with exact MaxSim, defaults to the index setting (True); needs query token matrices

        Returns:
            list of (index id, score) per query, best first
        """

        # Checked here, before faiss or torch see it, so the error names the value
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")

        # Per-call arguments, then per-thread options, then index settings
        options = {
            **self.options.values,
            **{k: v for k, v in {"candidates": candidates, "efsearch": efsearch, "nprobe": nprobe, "rerank": rerank}.items() if v is not None},
        }
        candidates, efsearch, nprobe = (
            options.get("candidates", self.config.get("candidates", CANDIDATES)),
            options.get("efsearch"),
            options.get("nprobe"),
        )

        tokens = getattr(queries, "tokens", None)
        rerank = options.get("rerank", self.config.get("rerank", True)) and tokens is not None
        for name, value in [("candidates", candidates), ("efsearch", efsearch), ("nprobe", nprobe)]:
            if (value is not None or name == "candidates") and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not limit:
            return [[] for _ in range(len(queries))]

        scores, ids = self.fdes.search(np.asarray(queries, dtype=np.float32), max(candidates, limit) if rerank else limit, efsearch, nprobe)

        results = []
        for x, (row, uids) in enumerate(zip(scores, ids)):
            valid = uids >= 0
            row, uids = row[valid], uids[valid]
            if rerank and len(uids):
                exact = maxsim_flat(tokens[x], *self.store.gather(uids))
                order = topk(exact[None], limit)[0][0]
                results.append([(int(uids[i]), positive(exact[i])) for i in order])
            else:
                # FDE inner product estimates the MaxSim sum over query tokens in every repetition
                scale = self.config["muvera"]["repetitions"] * (max(len(tokens[x]), 1) if tokens is not None else 1)
                results.append([(int(uid), positive(score / scale)) for uid, score in zip(uids[:limit], row[:limit])])

        return results

    def count(self):
        return self.fdes.count() if self.fdes else 0

    def load(self, path):
        header = self.header(path)
        self.fdes = FDEIndex.load(os.path.join(path, "fdes"))
        self.store = TokenStore.load(os.path.join(path, "tokens"), mmap=True)

        # Cross-check the parts against the header before any search trusts them
        if self.fdes.count() != header["documents"] or len(self.store) != header["documents"]:
            raise ValueError(
                f"Index at {path} is inconsistent: header says {header['documents']} documents, "
                f"FDE index has {self.fdes.count()}, token store has {len(self.store)}"
            )

    def save(self, path):
        """
        Saves to a directory at path. Everything is written to a new sibling directory first and swapped in by renames, so a
        crash mid-save leaves the previous save loadable, and files that a loaded index memory-maps are never written over.

        Args:
            path: output directory
        """

        temp = files.tempdir(path)
        try:
            self.fdes.save(os.path.join(temp, "fdes"))
            self.store.save(os.path.join(temp, "tokens"))
            header = {
                "format": FORMAT,
                "version": VERSION,
                "documents": self.count(),
                "dimensions": self.config.get("dimensions"),
                "fingerprint": self.config.get("fingerprint"),
                "offset": self.config.get("offset"),
            }
            files.writeheader(temp, header)
            files.replacedir(temp, path)
        except BaseException:
            files.remove(temp)
            raise

    def close(self):
        self.fdes, self.store = None, None
        super().close()

    def check(self, embeddings):
        """
        Raises an error captured while encoding in txtai's background thread, in the caller's thread, leaving the index as it
        was. txtai has already assigned index ids to every document of the failed pass, so those ids are skipped here too:
        later documents keep the ids txtai gives them.

        Args:
            embeddings: Encoded from LateVectors
        """

        if embeddings.error is not None:
            self.config["offset"] = self.config.get("offset", 0) + embeddings.streamed
            raise embeddings.error

        # Tokens past the model's document length are not indexed: say so, since MaxSim never sees them
        if embeddings.truncated:
            length = embeddings.settings["vectors"].get("document_length")
            logger.warning("%d of %d documents were cut at the model's document length (%s tokens)", embeddings.truncated, len(embeddings), length)

    def configure(self, embeddings):
        """
        Writes the resolved model, MUVERA and re-ranking settings into the scoring config, so the saved config.json says exactly
        how the index was built. txtai gives the vectors model a copy of this config, so the index backend writes them.

        Args:
            embeddings: Encoded from LateVectors
        """

        settings = embeddings.settings
        self.config["vectors"] = {**self.config.get("vectors", {}), **settings["vectors"]}
        self.config["muvera"] = settings["muvera"]
        self.config["fingerprint"] = settings["fingerprint"]
        self.config["tokens"] = embeddings.store.dtype
        self.config.setdefault("rerank", True)
        self.config.setdefault("candidates", CANDIDATES)

    def header(self, path):
        """
        Reads and validates the saved header.

        Args:
            path: index directory

        Returns:
            header dict
        """

        # Recover from a crash between the two renames of a save
        files.restore(path)
        header = files.readheader(os.path.join(path, "header.json"), "txtai-muvera index", FORMAT, VERSION)

        for key in ["dimensions", "fingerprint"]:
            if self.config.get(key) is not None and header.get(key) != self.config.get(key):
                raise ValueError(f"Index at {path} was built with {key} {header.get(key)!r} but the config says {self.config.get(key)!r}")

        return header


def positive(score):
    """
    Maps a score to a strictly positive value with the same order, so that txtai keeps every result: positive scores move by
    less than 1e-6, scores <= 0 land in (0, 5e-7].

    Args:
        score: MaxSim-scaled score

    Returns:
        float
    """

    score = float(score)
    return max(score, 0.0) + 1e-6 / (1.0 + np.exp(-score)) if np.isfinite(score) else 1e-12


class Options(threading.local):
    """
    Per-thread search options of an index backend: txtai's search has no route for extra arguments, so a call that needs its own
    candidate count or ANN depth sets them here for the duration of the call, without affecting other threads.
    """

    def __init__(self):
        super().__init__()
        self.values = {}

    @contextmanager
    def __call__(self, **values):
        previous = self.values
        self.values = {**previous, **{k: v for k, v in values.items() if v is not None}}
        try:
            yield
        finally:
            self.values = previous
