"""
FDEIndex module
"""

import math
import os

import faiss
import numpy as np

from . import files

# Saved format name, version written and versions read (version 1: no checksums, no binary codes)
FORMAT, VERSION, VERSIONS = "txtai-muvera-fdeindex", 2, (1, 2)

# Accepted settings
INDEXES, QUANTIZE = ("auto", "flat", "hnsw", "ivf", "fastscan"), (None, "sq8", "pq", "binary")

# Defaults chosen with benchmarks/ann.py on 10k clustered FDEs of 10,240 dims, 2 cores:
#  - exact search reads n * dims * 4 bytes per query (memory bound, ~10 ms per 3,000 documents at 10,240 dims), so auto
#    switches to HNSW above 5,000 documents (~15-20 ms per query)
#  - HNSW M=32, efConstruction=100, efSearch=128: recall@10 0.98, recall@100 0.94 (M=16: 0.93 / 0.81)
#  - IVF needs nprobe ~ nlist / 2 on FDEs: nlist = sqrt(n), nprobe = 64 gave recall@10 0.95 (4 * sqrt(n): 0.69)
#  - efSearch = max(efsearch, factor x candidates), factor 2: at 50,000 documents (benchmarks/recall.py, MiniLM stand-in on
#    SciFact + synthetic padding from its token matrices) HNSW keeps exact-FDE recall of the exact MaxSim top 10 within 0.01
#    at 100-300 candidates (0.823 / 0.900 / 0.923 against flat 0.827 / 0.903 / 0.930)
THRESHOLD = 5000
HNSW = {"m": 32, "efconstruction": 100, "efsearch": 128, "factor": 2}
IVF = {"nlist": None, "nprobe": 64}

# Product quantisation: m sub-quantizers (None = largest divisor of dims <= dims / 16), nbits per code (8: 256 centroids per
# sub-vector, MUVERA's PQ-256-8 is m = dims / 8; 4: 16 centroids, ~16x faster to train, fast-scan search on flat indexes),
# train: fewest vectors a PQ is trained on (None = 16 * 2^nbits); smaller collections are stored uncompressed until they grow;
# sample: most vectors it is trained on (a seeded random subset; None = all): training time is linear in it, so a sample of
# 16 * 2^nbits is the faster-to-train setting
PQ = {"m": None, "nbits": 8, "train": None, "sample": None}

# Fast-scan first stage (index "fastscan"): every vector also gets 4-bit PQ codes (m sub-quantizers, None = dims / 4: 256 bytes
# at 2,048 dims) that faiss scans with SIMD lookups for factor x limit candidates, re-scored exactly against the stored vectors
# (float or sq8). Below `threshold` vectors there is no first stage: search scans the stored vectors (flat). The codes are
# trained on at most `sample` vectors. Chosen with benchmarks/candidates.py (docs/scale.md): on wordnet-200k's real FDEs
# m = dims / 4 with factor 4 kept 0.867 of the exact MaxSim top 10 in 1,000 candidates against the flat scan's 0.874 (dims / 8:
# 0.801) at 9.6 ms against 75.6 ms per query; on a million synthetic documents 0.964, as the flat scan, at 32 ms against 411 ms.
# Below 50,000 documents a flat scan costs under ~20 ms per query and stays exact
FASTSCAN = {"m": None, "factor": 4, "threshold": 50000, "sample": 65536}

# Binary codes (one sign bit per dimension): rescore * limit Hamming candidates are re-scored by the float query against the
# +-1 codes (asymmetric inner product), best first
BINARY = {"rescore": 4}

# Vectors converted to float32 and handed to faiss at a time: a float16 input (a write's spooled FDEs) is never converted whole
BLOCK = 16384


class FDEIndex:
    """
    Inner product index over MUVERA fixed dimensional encodings, backed by faiss and addressed by int64 ids.

    Index types:
      - flat: exact inner product search
      - hnsw: graph search, faiss cannot remove from HNSW, so deleted ids are filtered out at search time with an
        IDSelector (and again after search). They stop using memory on the next index() rebuild.
      - ivf: inverted lists, nlist defaults to sqrt(n) (at most n / 39 so every list can be trained), nprobe to 64.
        On FDEs IVF needs to visit many lists: prefer hnsw
      - auto: flat when index() gets at most `threshold` vectors, hnsw above. The choice holds until the next index().
      - fastscan: flat, plus 4-bit PQ fast-scan codes of every vector once the index holds fastscan.threshold vectors: search
        scans the codes for factor x limit candidates and re-scores them against the stored vectors (see FASTSCAN)

    quantize compresses stored vectors:
      - sq8: 8 bits per dimension (trained on the min/max of the first index() call)
      - pq: product quantisation, see PQ. Needs `pq.train` vectors to train: index() with fewer stores them uncompressed
        (config `trained: false`) and the first add() that reaches `pq.train` vectors trains and compresses everything
      - binary: one sign bit per dimension (faiss binary flat or HNSW, no IVF), Hamming search then float re-scoring

    Trained quantizers (sq8, pq, IVF lists) are kept on add(): compressed codes cannot be retrained without the original
    vectors, and MUVERA's projections are fixed, so the first vectors describe later ones. index() trains anew.

    Searching one built index from many threads at once is safe in faiss; add, delete and index must not run
    concurrently with anything else.
    """

    # pylint: disable=R0913,R0917
    def __init__(self, dimensions, index="auto", quantize=None, threshold=THRESHOLD, hnsw=None, ivf=None, pq=None, binary=None, trained=None, fastscan=None):
        """
        Creates an empty index.

        Args:
            dimensions: vector dimensions
            index: auto, flat, hnsw or ivf
            quantize: None, sq8, pq or binary
            threshold: largest number of documents indexed exactly when index is auto
            hnsw: dict with m, efconstruction, efsearch
            ivf: dict with nlist (None = sqrt(n)), nprobe
            pq: dict with m (sub-quantizers, must divide dimensions), nbits (8 or 4), train (fewest training vectors), sample
                (most training vectors)
            binary: dict with rescore (Hamming candidates per result re-scored in float)
            trained: resolved state written into config, ignored here (the data decides)
            fastscan: dict with m (sub-quantizers, must divide dimensions), factor (candidates scanned per result), threshold
                      (fewest vectors that get a first stage), sample (most training vectors)
        """

        if index not in INDEXES:
            raise ValueError(f"Unknown index type {index!r}, accepted: {', '.join(INDEXES)}")
        if quantize not in QUANTIZE:
            raise ValueError(f"Unknown quantize {quantize!r}, accepted: {', '.join(str(x) for x in QUANTIZE)}")
        if int(dimensions) <= 0:
            raise ValueError(f"dimensions must be a positive integer, got {dimensions}")
        if int(threshold) < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if quantize == "binary" and (index in ("ivf", "fastscan") or int(dimensions) % 8):
            raise ValueError(f"binary codes need dimensions divisible by 8 and index flat, hnsw or auto, got {dimensions} and {index!r}")
        if index == "fastscan" and quantize not in (None, "sq8"):
            raise ValueError(f"index fastscan re-scores float or sq8 vectors: quantize must be None or sq8, got {quantize!r}")

        self.dimensions, self.type, self.quantize, self.threshold = int(dimensions), index, quantize, int(threshold)
        self.hnsw, self.ivf = {**HNSW, **(hnsw or {})}, {**IVF, **(ivf or {})}
        self.pq, self.binary = {**PQ, **(pq or {})}, {**BINARY, **(binary or {})}
        self.fastscan = {**FASTSCAN, **(fastscan or {})}

        if quantize == "pq":
            m, nbits = int(self.pq.get("m") or pqsize(self.dimensions)), int(self.pq["nbits"])
            if m <= 0 or self.dimensions % m:
                raise ValueError(f"pq m must divide dimensions ({self.dimensions}), got {m}")
            if not 1 <= nbits <= 16:
                raise ValueError(f"pq nbits must be in 1..16, got {nbits}")
            self.pq["m"], self.pq["nbits"] = m, nbits
            self.pq["train"] = int(self.pq["train"] if self.pq["train"] is not None else 16 * 2**nbits)
        if int(self.binary["rescore"]) < 1:
            raise ValueError(f"binary rescore must be >= 1, got {self.binary['rescore']}")
        if index == "fastscan":
            self.fastscan.update(fastscanned(self.dimensions, self.fastscan))

        # Resolved index type, faiss index, ids deleted but still stored (hnsw), whether the quantizer is trained and an id to
        # code row lookup for re-scoring (built on first use)
        self.kind, self.backend, self.deleted, self.trained, self.lookup = None, None, np.zeros(0, dtype=np.int64), None, None

        # Fast-scan first stage (index fastscan, from fastscan.threshold vectors): 4-bit PQ codes of the same ids
        self.scan = None

        # Sorted copy of stored(), kept up to date by add and delete so that the known-id checks cost a binary search per id in
        # the batch instead of a sort of every stored id. None until first needed (after load and index())
        self.known = None

    def index(self, ids, vectors):
        """
        Builds a new index from scratch, training it when needed.

        Args:
            ids: int64 ids
            vectors: float32 (n, dimensions)
        """

        ids, vectors = self.inputs(ids, vectors)
        kind = self.type if self.type != "auto" else ("flat" if len(ids) <= self.threshold else "hnsw")
        self.build(kind, ids, vectors)

    def add(self, ids, vectors):
        """
        Adds vectors for new ids. Builds the index when it is empty. An untrained PQ index that reaches `pq.train` vectors is
        trained and compressed here, keeping its index type.

        Args:
            ids: int64 ids
            vectors: float32 (n, dimensions)
        """

        if self.backend is None:
            self.index(ids, vectors)
            return

        ids, vectors = self.inputs(ids, vectors)
        known = self.contains(ids)
        if known.any():
            raise ValueError(f"Ids already in the index: {np.sort(ids[known])[:10].tolist()}")

        if self.trained is False and self.count() + len(ids) >= self.pq["train"]:
            # Uncompressed vectors are exact: rebuild compressed from them plus the new ones
            live, stored = self.vectors()
            self.build(self.kind, np.concatenate([live, ids]), np.concatenate([stored, vectors]))
            return

        # The id cache is dropped while the backend changes (an error leaves it to be rebuilt from the backend), then the new ids
        # are merged into it: a copy of the sorted ids, no sort
        known, self.known, self.lookup = self.known, None, None
        for start, block in blocks(vectors):
            self.backend.add_with_ids(self.encode(block), ids[start : start + len(block)])
            if self.scan is not None:
                self.scan.add_with_ids(block, ids[start : start + len(block)])
        if self.scan is None and self.kind == "fastscan" and self.count() >= int(self.fastscan["threshold"]):
            self.scan = self.scanner(self.count(), self.rows)
        ids = np.sort(ids)
        self.known = np.insert(known, np.searchsorted(known, ids), ids)

    def delete(self, ids):
        """
        Deletes ids. Unknown ids are ignored.

        Args:
            ids: int64 ids
        """

        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if self.backend is None or not len(ids):
            return

        if self.kind == "hnsw":
            # HNSW graphs cannot drop nodes: remember deleted ids and filter them out at search time (they stay stored)
            ids = ids[self.contains(ids)]
            self.deleted = np.union1d(self.deleted, ids)
        else:
            # IVF's id hash table removes only by IDSelectorArray. The id cache drops the removed ids, as in add
            found = ids[self.contains(ids)]
            known, self.known, self.lookup = self.known, None, None
            self.backend.remove_ids(faiss.IDSelectorArray(ids) if self.kind == "ivf" else faiss.IDSelectorBatch(ids))
            if self.scan is not None:
                self.scan.remove_ids(faiss.IDSelectorBatch(ids))
            self.known = np.delete(known, np.searchsorted(known, found))

    def snapshot(self):
        """
        The state that add and delete change, for restore. Taking one copies no vectors.

        Returns:
            opaque tuple for restore
        """

        ntotal = 0 if self.backend is None else int(self.backend.ntotal)
        scanned = 0 if self.scan is None else int(self.scan.ntotal)
        return (self.backend, self.kind, self.trained, self.deleted, self.known, dict(self.ivf), ntotal, self.scan, scanned)

    def restore(self, snapshot, ids):
        """
        Undoes the adds of ids since snapshot was taken, so that the index holds, orders and finds exactly what it did then.

        A backend built since (first add, PQ rebuild) is dropped for the one held then, which a build never changes. Vectors
        added to the same backend are removed: flat codes shift down over removed rows and IVF lists drop their last entries, so
        every older vector keeps its place and search results stay identical. An HNSW graph cannot drop nodes and links them
        into older nodes' neighbour lists, so callers delete from HNSW before adding (deletes are tombstones, undone here) and
        add last; vectors that a failed HNSW add left in the graph are tombstoned. A flat or IVF delete since the snapshot is
        not undone: callers delete last there.

        Args:
            snapshot: from snapshot()
            ids: int64 ids added since the snapshot (those the index holds are removed)
        """

        backend, kind, trained, deleted, known, ivf, ntotal, scan, scanned = snapshot
        added = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if self.backend is backend and backend is not None and int(backend.ntotal) > ntotal:
            self.known = None
            stored = added[self.contains(added)]
            if kind == "hnsw":
                deleted, known = np.union1d(deleted, stored), None
            else:
                self.backend.remove_ids(faiss.IDSelectorArray(stored) if kind == "ivf" else faiss.IDSelectorBatch(stored))

        # A first stage built since the snapshot is dropped; one that was there loses the ids added to it since
        if self.scan is scan and scan is not None and int(scan.ntotal) > scanned:
            scan.remove_ids(faiss.IDSelectorBatch(added))

        self.backend, self.kind, self.trained, self.deleted, self.known, self.ivf, self.lookup = backend, kind, trained, deleted, known, ivf, None
        self.scan = scan

    def search(self, queries, limit, efsearch=None, nprobe=None):
        """
        Searches for the best inner product matches.

        Args:
            queries: float32 (nq, dimensions), or one (dimensions,) query
            limit: maximum results per query
            efsearch: HNSW search depth, defaults to max(configured efsearch, hnsw factor x candidates fetched), never below the
                      number of candidates fetched
            nprobe: IVF lists to visit, defaults to the configured nprobe

        Returns:
            (scores float32 (nq, limit), ids int64 (nq, limit)), missing results have id -1 and score -inf
        """

        queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if queries.ndim != 2 or queries.shape[1] != self.dimensions:
            raise ValueError(f"Queries have {queries.shape[-1]} dimensions, index has {self.dimensions}")
        finite(queries, "Query")

        limit = int(limit)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")

        scores, ids = np.full((len(queries), limit), -np.inf, dtype=np.float32), np.full((len(queries), limit), -1, dtype=np.int64)
        if self.backend is None or not self.count() or not limit or not len(queries):
            return scores, ids

        if self.scan is not None:
            return self.rescan(queries, limit)

        # Binary codes fetch rescore x limit Hamming candidates, re-scored below
        binary = self.quantize == "binary"
        fetch = limit * int(self.binary["rescore"]) if binary else limit

        # Search parameters, keeping selector objects referenced until the search is done
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.deleted)) if len(self.deleted) else None
        if self.kind == "hnsw":
            # The search depth grows with the candidates asked for: factor x candidates, at least efsearch
            depth = int(efsearch or max(int(self.hnsw["efsearch"]), int(self.hnsw.get("factor") or 1) * fetch))
            params = faiss.SearchParametersHNSW(efSearch=max(depth, fetch))
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.ivf["nprobe"]))
        else:
            # Flat codes indexes reject search parameters, and never need a selector: they remove deleted ids
            params = faiss.SearchParameters() if selector is not None else None
        if selector is not None:
            params.sel = selector

        scores, ids = self.backend.search(self.encode(queries), fetch, params=params)

        # Never return deleted ids, even if a selector let one through
        missing = (ids < 0) | np.isin(ids, self.deleted)
        ids[missing] = -1
        if binary:
            return self.rescore(queries, ids, limit)

        scores = scores.astype(np.float32)
        scores[missing] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def count(self):
        """
        Number of live vectors.

        Returns:
            int
        """

        return 0 if self.backend is None else int(self.backend.ntotal) - len(self.deleted)

    @property
    def config(self):
        """
        Resolved settings, to be saved with the index configuration.

        Returns:
            dict
        """

        config = {"index": self.type, "type": self.kind, "threshold": self.threshold, "quantize": self.quantize}
        if self.kind == "hnsw" or self.type in ("auto", "hnsw"):
            config["hnsw"] = dict(self.hnsw)
        if self.kind == "ivf" or self.type == "ivf":
            config["ivf"] = dict(self.ivf)
        if self.quantize == "pq":
            config["pq"] = dict(self.pq)
            if self.trained is not None:
                config["trained"] = self.trained
        if self.quantize == "binary":
            config["binary"] = dict(self.binary)
        if self.type == "fastscan":
            config["fastscan"] = dict(self.fastscan)

        return config

    def save(self, path):
        """
        Saves the index to the directory path: header.json, index.faiss (faiss.write_index or write_index_binary) and
        deleted.npy. The header records each file's checksum (files.digest), verified at load.

        The files are written into a new temporary sibling directory, which then replaces path with renames (see
        TokenStore.save): a crash leaves the previous save intact.

        Args:
            path: directory path
        """

        path = os.path.abspath(path)
        tmp = files.tempdir(path)
        try:
            names = ["deleted.npy"]
            if self.backend is not None:
                write = faiss.write_index_binary if self.quantize == "binary" else faiss.write_index
                write(self.backend, os.path.join(tmp, "index.faiss"))
                names.append("index.faiss")
            if self.scan is not None:
                faiss.write_index(self.scan, os.path.join(tmp, "scan.faiss"))
                names.append("scan.faiss")
            np.save(os.path.join(tmp, "deleted.npy"), self.deleted, allow_pickle=False)

            header = {
                "format": FORMAT,
                "version": VERSION,
                "dimensions": self.dimensions,
                "count": self.count(),
                "config": {**self.config, "hnsw": self.hnsw, "ivf": self.ivf, "pq": self.pq, "binary": self.binary, "fastscan": self.fastscan},
                "checksums": {name: files.digest(os.path.join(tmp, name)) for name in names},
            }
            files.writeheader(tmp, header)

            files.replacedir(tmp, path)
        except BaseException:
            files.remove(tmp)
            raise

    @classmethod
    def load(cls, path):
        """
        Loads an index saved with save (format version 1 or 2). Version 2 files must match their recorded checksums.

        Args:
            path: directory path

        Returns:
            FDEIndex
        """

        path = os.path.abspath(path)
        header = readheader(os.path.join(path, "header.json"))

        config = header["config"]
        index = cls(
            header["dimensions"],
            config["index"],
            config["quantize"],
            config["threshold"],
            config["hnsw"],
            config["ivf"],
            config["pq"],
            config.get("binary"),
            fastscan=config.get("fastscan"),
        )
        index.kind = config["type"]

        indexfile, deletedfile = os.path.join(path, "index.faiss"), os.path.join(path, "deleted.npy")
        if index.kind is not None:
            for file in (indexfile, deletedfile):
                if not os.path.isfile(file):
                    raise FileNotFoundError(f"FDE index file missing: {file}")
                verify(file, header)
            try:
                read = faiss.read_index_binary if index.quantize == "binary" else faiss.read_index
                index.backend = read(indexfile)
            except RuntimeError as error:
                raise ValueError(f"Corrupt FDE index file {indexfile}: {error}") from error
            try:
                index.deleted = np.load(deletedfile, allow_pickle=False).astype(np.int64).reshape(-1)
            except ValueError as error:
                raise ValueError(f"Corrupt FDE index file {deletedfile}: {error}") from error

            if index.kind == "ivf" and isinstance(index.backend, faiss.IndexIDMap2):
                index.backend = unwrap(index.backend, indexfile)

            if index.backend.d != index.dimensions or index.count() != header["count"]:
                raise ValueError(f"FDE index file {indexfile} does not match its header (dimensions, count)")

            # A fast-scan first stage is saved when the index had one
            scanfile = os.path.join(path, "scan.faiss")
            if "scan.faiss" in (header.get("checksums") or {}):
                verify(scanfile, header)
                try:
                    index.scan = faiss.read_index(scanfile)
                except RuntimeError as error:
                    raise ValueError(f"Corrupt FDE index file {scanfile}: {error}") from error
                stored = [faiss.vector_to_array(x.id_map) for x in (index.scan, index.backend)]
                if not np.array_equal(*stored):
                    raise ValueError(f"FDE index file {scanfile} does not hold the ids of {indexfile} in the same order")

            # Version 1 PQ indexes were always trained; version 2 records it
            if index.quantize == "pq":
                index.trained = bool(config.get("trained", True))

        return index

    def build(self, kind, ids, vectors):
        """
        Builds a new backend of kind from ids and vectors, training it when needed.

        Args:
            kind: resolved index type
            ids: int64 ids
            vectors: float32 vectors
        """

        # PQ with fewer vectors than it trains on stays uncompressed until add() reaches pq.train
        self.kind = kind
        self.trained = (len(ids) >= self.pq["train"]) if self.quantize == "pq" else None
        backend = self.create(len(ids))
        if self.quantize == "binary":
            backend = faiss.IndexBinaryIDMap2(backend)
        elif kind == "ivf":
            # IVF lists hold ids themselves (IndexIDMap2 would misalign ids after a remove); a hash table finds them by id
            backend.set_direct_map_type(faiss.DirectMap.Hashtable)
        else:
            backend = faiss.IndexIDMap2(backend)

        if not backend.is_trained:
            quiet(backend)
            backend.train(self.training(kind, vectors))
        # The first stage is trained first, so that both stages take each block in one pass over the vectors
        scan = None
        if kind == "fastscan" and len(ids) >= int(self.fastscan["threshold"]):
            scan = self.scanner(len(ids), lambda positions: (ids[positions], taken(vectors, positions)), fill=False)
        for start, block in blocks(vectors):
            backend.add_with_ids(self.encode(block), ids[start : start + len(block)])
            if scan is not None:
                scan.add_with_ids(block, ids[start : start + len(block)])

        self.backend, self.deleted, self.lookup, self.known, self.scan = backend, np.zeros(0, dtype=np.int64), None, None, scan

    def training(self, kind, vectors):
        """
        The vectors a new backend trains on, float32. A flat or HNSW sq8 quantizer learns each dimension's minimum and maximum
        (faiss's default range statistic), so two rows holding them, computed a block at a time, train it exactly as every
        vector would without a float32 copy of them all. PQ trains on at most `pq.sample` vectors; other trainers on all.

        Args:
            kind: resolved index type
            vectors: (n, dimensions) vectors, float32 or float16

        Returns:
            float32 (rows, dimensions)
        """

        if self.quantize == "sq8" and kind != "ivf":
            low, high = np.full(self.dimensions, np.inf, np.float32), np.full(self.dimensions, -np.inf, np.float32)
            for _, block in blocks(vectors):
                low, high = np.minimum(low, block.min(axis=0)), np.maximum(high, block.max(axis=0))
            return np.stack([low, high]) if len(vectors) else np.zeros((0, self.dimensions), np.float32)

        sample = self.pq.get("sample") if self.quantize == "pq" and self.trained else None
        if sample and len(vectors) > int(sample):
            rows = np.sort(np.random.default_rng(0).choice(len(vectors), int(sample), replace=False))
            return np.ascontiguousarray(vectors[rows], dtype=np.float32)

        return np.ascontiguousarray(vectors, dtype=np.float32)

    def create(self, count):
        """
        Creates the core faiss index for the resolved type.

        Args:
            count: number of training vectors

        Returns:
            faiss index
        """

        d, metric, kind = self.dimensions, faiss.METRIC_INNER_PRODUCT, self.kind
        quantize = None if self.trained is False else self.quantize

        if quantize == "binary":
            if kind == "hnsw":
                index = faiss.IndexBinaryHNSW(d, int(self.hnsw["m"]))
                index.hnsw.efConstruction = int(self.hnsw["efconstruction"])
                index.hnsw.efSearch = int(self.hnsw["efsearch"])
                return index
            return faiss.IndexBinaryFlat(d)

        m, nbits = self.pq.get("m"), int(self.pq.get("nbits") or 8)
        if kind == "hnsw":
            hm = int(self.hnsw["m"])
            if quantize == "sq8":
                index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, hm, metric)
            elif quantize == "pq":
                index = faiss.IndexHNSWPQ(d, m, hm, nbits, metric)
            else:
                index = faiss.IndexHNSWFlat(d, hm, metric)
            index.hnsw.efConstruction = int(self.hnsw["efconstruction"])
            index.hnsw.efSearch = int(self.hnsw["efsearch"])
            return index

        if kind == "ivf":
            nlist = self.ivf["nlist"] or max(1, min(int(math.sqrt(count)), count // 39))
            nlist = max(1, min(int(nlist), count))
            self.ivf["nlist"] = nlist
            quantizer = faiss.IndexFlatIP(d)
            if quantize == "sq8":
                index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, metric)
            elif quantize == "pq":
                index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, metric)
            else:
                index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
            index.nprobe = int(self.ivf["nprobe"])

            # The index owns its quantizer
            index.own_fields = True
            quantizer.this.disown()
            return index

        if quantize == "sq8":
            return faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, metric)
        if quantize == "pq":
            # 4-bit codes use faiss's fast-scan layout (SIMD lookups in registers)
            return faiss.IndexPQFastScan(d, m, nbits, metric) if nbits == 4 else faiss.IndexPQ(d, m, nbits, metric)

        return faiss.IndexFlatIP(d)

    def encode(self, vectors):
        """
        Converts float vectors to what the backend stores: sign bits for binary codes, the vectors themselves otherwise.

        Args:
            vectors: float32 (n, dimensions)

        Returns:
            float32 vectors or uint8 (n, dimensions / 8) codes
        """

        return np.packbits(vectors > 0, axis=1) if self.quantize == "binary" else vectors

    def rescore(self, queries, ids, limit):
        """
        Re-scores binary Hamming candidates with the float query against the +-1 codes: q . (2 * bits - 1), best first.

        Args:
            queries: float32 (nq, dimensions)
            ids: int64 (nq, fetch) Hamming candidates, -1 for none
            limit: results per query

        Returns:
            (scores float32 (nq, limit), ids int64 (nq, limit))
        """

        codes, positions = self.codes(ids)
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        for x, query in enumerate(queries):
            valid = positions[x] >= 0
            if valid.any():
                bits = np.unpackbits(codes[positions[x][valid]], axis=1, count=self.dimensions).astype(np.float32)
                scores[x, valid] = 2.0 * (bits @ query) - query.sum()

        # Stable sort keeps Hamming order among ties; -1 ids sort last with -inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :limit]
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
        ids[np.isneginf(scores)] = -1
        return padded(scores, ids, limit)

    def codes(self, ids):
        """
        Binary code rows of ids, without copying the codes: a view of the stored codes and each id's row (-1 for none).

        Args:
            ids: int64 array of ids, -1 for none

        Returns:
            (uint8 (n, dimensions / 8) view of every stored code, int64 row positions shaped like ids)
        """

        inner = faiss.downcast_IndexBinary(self.backend.index)
        storage = faiss.downcast_IndexBinary(inner.storage) if self.kind == "hnsw" else inner
        codes = faiss.rev_swig_ptr(storage.xb.data(), storage.xb.size()).reshape(-1, self.dimensions // 8)
        return codes, self.positions(ids)

    def positions(self, ids):
        """
        Storage rows of ids in the backend (-1 for none), by binary search in an id to row lookup built on first use.

        Args:
            ids: int64 array of ids, -1 for none

        Returns:
            int64 row positions shaped like ids
        """

        if self.lookup is None:
            stored = self.stored()
            order = np.argsort(stored, kind="stable")
            self.lookup = (stored[order], order.astype(np.int64))

        keys, order = self.lookup
        if not len(keys):
            return np.full(ids.shape, -1, dtype=np.int64)
        slots = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
        return np.where((ids >= 0) & (keys[slots] == ids), order[slots], -1)

    def rescan(self, queries, limit):
        """
        Fast-scan search: the 4-bit codes pick factor x limit candidates per query, which faiss re-scores exactly against the
        stored vectors (float or sq8 codes), best first. The first stage holds the same ids in the same storage order as the
        backend (every add, delete and restore changes both alike, and both keep order when removing), so faiss's IndexRefine
        pairs them by position.

        Args:
            queries: float32 (nq, dimensions)
            limit: results per query

        Returns:
            (scores float32 (nq, limit), ids int64 (nq, limit))
        """

        if self.scan.ntotal != self.backend.ntotal:
            # Only a failure between the two halves of a delete leaves them apart: rebuild the first stage from the backend
            self.scan = self.scanner(int(self.backend.ntotal), self.rows)

        refine = faiss.IndexRefine(faiss.downcast_index(self.scan.index), faiss.downcast_index(self.backend.index))
        refine.k_factor = float(self.fastscan["factor"])
        scores, positions = refine.search(queries, limit)

        idmap = faiss.rev_swig_ptr(self.backend.id_map.data(), self.backend.id_map.size())
        ids = np.where(positions >= 0, idmap[np.maximum(positions, 0)], -1).astype(np.int64)
        scores = scores.astype(np.float32)
        scores[ids < 0] = -np.inf
        return scores, ids

    def scanner(self, count, rows, fill=True):
        """
        Builds the fast-scan first stage over every stored vector: 4-bit PQ codes trained on a seeded sample of at most
        fastscan.sample vectors, then filled in blocks so that no full float copy of a large index is ever made.

        Args:
            count: number of vectors
            rows: function (positions) -> (int64 ids, float32 vectors) of the vectors at those storage positions
            fill: add every vector; False returns the trained, empty stage (a build fills it with the blocks it adds)

        Returns:
            faiss IndexIDMap2 over an IndexPQFastScan
        """

        scan = faiss.IndexIDMap2(faiss.IndexPQFastScan(self.dimensions, int(self.fastscan["m"]), 4, faiss.METRIC_INNER_PRODUCT))
        quiet(scan)
        size = min(count, int(self.fastscan["sample"]))
        sample = np.sort(np.random.default_rng(0).choice(count, size, replace=False))
        scan.train(np.ascontiguousarray(rows(sample)[1], dtype=np.float32))
        for start in range(0, count if fill else 0, 65536):
            ids, vectors = rows(np.arange(start, min(start + 65536, count)))
            scan.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

        return scan

    def rows(self, positions):
        """
        Ids and vectors (decoded from the stored codes) at storage positions of a flat backend.

        Args:
            positions: int64 storage positions

        Returns:
            (int64 ids, float32 vectors)
        """

        ids = faiss.rev_swig_ptr(self.backend.id_map.data(), self.backend.id_map.size())[positions].astype(np.int64)
        return ids, faiss.downcast_index(self.backend.index).reconstruct_batch(positions)

    def contains(self, ids):
        """
        Which ids the backend holds (deleted HNSW ids included), by binary search in the sorted id cache.

        Args:
            ids: int64 array

        Returns:
            bool array shaped like ids
        """

        if self.known is None:
            self.known = np.sort(self.stored())

        keys = self.known
        if not len(keys):
            return np.zeros(ids.shape, dtype=bool)
        slots = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        return keys[slots] == ids

    def stored(self):
        """
        Ids held by the backend, deleted HNSW ids included, in storage order.

        Returns:
            int64 array
        """

        if self.backend is None:
            return np.zeros(0, dtype=np.int64)
        if self.kind != "ivf":
            return faiss.vector_to_array(self.backend.id_map).astype(np.int64)

        lists = faiss.extract_index_ivf(self.backend).invlists
        ids = [faiss.rev_swig_ptr(lists.get_ids(x), lists.list_size(x)).copy() for x in range(lists.nlist) if lists.list_size(x)]
        return np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, dtype=np.int64)

    def vectors(self):
        """
        Live ids and their exact vectors, from an uncompressed float backend.

        Returns:
            (int64 ids, float32 (n, dimensions) vectors)
        """

        stored = self.stored()
        if not len(stored):
            vectors = np.zeros((0, self.dimensions), np.float32)
        elif self.kind == "ivf":
            vectors = self.backend.reconstruct_batch(stored)
        else:
            vectors = self.backend.index.reconstruct_n(0, len(stored))
        live = ~np.isin(stored, self.deleted)
        return stored[live], np.ascontiguousarray(vectors[live])

    def inputs(self, ids, vectors):
        """
        Checks and converts ids and vectors.

        Args:
            ids: ids
            vectors: vectors

        Returns:
            (int64 ids, contiguous float32 vectors)
        """

        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        # float16 vectors (a write's spooled FDEs) stay as they are: they are converted a block at a time where used
        vectors = vectors if isinstance(vectors, np.ndarray) and vectors.dtype == np.float16 else np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.dimensions or len(vectors) != len(ids):
            raise ValueError(f"Expected {len(ids)} vectors of {self.dimensions} dimensions, got shape {vectors.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("Duplicate ids in batch")
        finite(vectors, "Vector", ids)

        return ids, vectors


def blocks(vectors):
    """
    Splits vectors into float32 blocks of at most BLOCK rows.

    Args:
        vectors: (n, dimensions) array, float32 or float16

    Returns:
        iterator of (first row, contiguous float32 block)
    """

    for start in range(0, len(vectors), BLOCK):
        block = np.array(vectors[start : start + BLOCK], dtype=np.float32)
        files.evict(vectors)
        yield start, block


def taken(vectors, rows):
    """
    Rows of vectors as a float32 copy, dropping the pages read when vectors are memory-mapped.

    Args:
        vectors: (n, dimensions) array
        rows: int64 rows

    Returns:
        float32 (len(rows), dimensions)
    """

    block = np.array(vectors[rows], dtype=np.float32)
    files.evict(vectors)
    return block


def unwrap(backend, file):
    """
    Converts a version 1 IVF index (IVF inside IndexIDMap2) to an IVF index that holds its ids in its lists.

    Args:
        backend: IndexIDMap2 over an IVF index
        file: index file, for the message

    Returns:
        IVF index with a hash table direct map
    """

    idmap = faiss.vector_to_array(backend.id_map).astype(np.int64)
    index = faiss.clone_index(faiss.downcast_index(backend.index))
    lists = index.invlists
    for x in range(index.nlist):
        size = lists.list_size(x)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(x), size)
            if ids.min() < 0 or ids.max() >= len(idmap):
                raise ValueError(f"FDE index file {file} (version 1 IVF saved after deletes) has misaligned ids: rebuild it")
            ids[:] = idmap[ids]

    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def quiet(backend):
    """
    Lets faiss k-means (IVF lists, PQ codebooks) train on few vectors without its stderr warning (below 39 training points per
    centroid): a small collection is an expected case here, not a user error. The warning's threshold is all this changes.

    Args:
        backend: faiss index about to be trained
    """

    index = faiss.downcast_index(backend.index) if isinstance(backend, (faiss.IndexIDMap, faiss.IndexIDMap2)) else backend
    for part in (index, getattr(index, "pq", None)):
        cp = getattr(part, "cp", None)
        if cp is not None:
            cp.min_points_per_centroid = 1


def finite(vectors, what, ids=None):
    """
    Raises a ValueError naming the first row that holds NaN or infinity.

    Args:
        vectors: float32 (n, dimensions)
        what: row name for the message
        ids: row ids for the message, None to use positions
    """

    # A block of rows at a time: a whole-array mask would cost a byte per value (2 GB for a million 2,048-dim FDEs)
    rows, block = [], 65536
    for start in range(0, len(vectors), block):
        rows.extend(start + np.flatnonzero(~np.isfinite(vectors[start : start + block]).all(axis=1)))
        files.evict(vectors)
    if rows:
        rows = np.array(rows, dtype=np.int64)
        names = (ids[rows] if ids is not None else rows)[:10].tolist()
        raise ValueError(f"{what} rows hold NaN or infinity: {len(rows)} rows, first {'ids' if ids is not None else 'rows'} {names}")


def padded(scores, ids, limit):
    """
    Pads (nq, n <= limit) results to (nq, limit) with score -inf and id -1.
    """

    if scores.shape[1] < limit:
        extra = limit - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=-1)

    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


def readheader(file):
    """
    Reads an FDE index header of any readable version.

    Args:
        file: header.json path

    Returns:
        header dict
    """

    header = files.readjson(file, "FDE index header")
    if header.get("format") != FORMAT:
        raise ValueError(f"Not a FDE index header {file}: format {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("version") not in VERSIONS:
        raise ValueError(f"FDE index at {file} has version {header.get('version')!r}; this txtai-muvera reads version {', '.join(map(str, VERSIONS))}")

    return header


def verify(file, header):
    """
    Checks a file against the checksum its header recorded (version 2 headers record one per file).

    Args:
        file: saved file
        header: header dict
    """

    checksums = header.get("checksums")
    if header["version"] < 2:
        return

    name = os.path.basename(file)
    if not isinstance(checksums, dict) or name not in checksums:
        raise ValueError(f"Corrupt FDE index header: no checksum for {file}")
    if files.digest(file) != checksums[name]:
        raise ValueError(f"Corrupt FDE index file {file}: checksum mismatch (the file changed after it was saved)")


def fastscanned(dimensions, options):
    """
    Checks fast-scan options and resolves the number of sub-quantizers.

    Args:
        dimensions: vector dimensions
        options: dict with m, factor, threshold, sample

    Returns:
        dict of resolved integer options
    """

    m = options.get("m") or pqsize(dimensions, 4)
    resolved = {"m": m, "factor": options.get("factor"), "threshold": options.get("threshold"), "sample": options.get("sample")}
    for name, low in (("m", 1), ("factor", 1), ("threshold", 0), ("sample", 1)):
        value = resolved[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"fastscan {name} must be an integer >= {low}, got {value!r}")
        resolved[name] = int(value)
    if dimensions % resolved["m"]:
        raise ValueError(f"fastscan m must divide dimensions ({dimensions}), got {resolved['m']}")

    return resolved


def pqsize(dimensions, width=16):
    """
    Default number of PQ sub-quantizers: the largest divisor of dimensions that is <= dimensions / width (16 for stored PQ
    codes, 4 for the fast-scan first stage).

    Args:
        dimensions: vector dimensions
        width: fewest dimensions per sub-quantizer

    Returns:
        int
    """

    return next(m for m in range(max(1, dimensions // width), 0, -1) if dimensions % m == 0)
