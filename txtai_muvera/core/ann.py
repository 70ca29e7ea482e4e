"""
FDEIndex module
"""

import math
import os

import faiss
import numpy as np

from . import files

# Saved format name and version, checked at load
FORMAT, VERSION = "txtai-muvera-fdeindex", 1

# Accepted settings
INDEXES, QUANTIZE = ("auto", "flat", "hnsw", "ivf"), (None, "sq8", "pq")

# Defaults chosen with benchmarks/ann.py on 10k clustered FDEs of 10,240 dims, 2 cores:
#  - exact search reads n * dims * 4 bytes per query (memory bound, ~10 ms per 3,000 documents at 10,240 dims), so auto
#    switches to HNSW above 5,000 documents (~15-20 ms per query)
#  - HNSW M=32, efConstruction=100, efSearch=128: recall@10 0.98, recall@100 0.94 (M=16: 0.93 / 0.81)
#  - IVF needs nprobe ~ nlist / 2 on FDEs: nlist = sqrt(n), nprobe = 64 gave recall@10 0.95 (4 * sqrt(n): 0.69)
THRESHOLD = 5000
HNSW = {"m": 32, "efconstruction": 100, "efsearch": 128}
IVF = {"nlist": None, "nprobe": 64}


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

    quantize compresses stored vectors: sq8 (8 bits per dimension) or pq (product quantisation, m sub-quantizers with
    dimensions % m == 0, by default the largest divisor of dimensions <= dimensions / 16, 8 bits each).

    Searching one built index from many threads at once is safe in faiss; add, delete and index must not run
    concurrently with anything else.
    """

    def __init__(self, dimensions, index="auto", quantize=None, threshold=THRESHOLD, hnsw=None, ivf=None, pq=None):
        """
        Creates an empty index.

        Args:
            dimensions: vector dimensions
            index: auto, flat, hnsw or ivf
            quantize: None, sq8 or pq
            threshold: largest number of documents indexed exactly when index is auto
            hnsw: dict with m, efconstruction, efsearch
            ivf: dict with nlist (None = sqrt(n)), nprobe
            pq: dict with m (sub-quantizers, must divide dimensions), nbits (default 8)
        """

        if index not in INDEXES:
            raise ValueError(f"Unknown index type {index!r}, accepted: {', '.join(INDEXES)}")
        if quantize not in QUANTIZE:
            raise ValueError(f"Unknown quantize {quantize!r}, accepted: {', '.join(str(x) for x in QUANTIZE)}")
        if int(dimensions) <= 0:
            raise ValueError(f"dimensions must be a positive integer, got {dimensions}")
        if int(threshold) < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")

        self.dimensions, self.type, self.quantize, self.threshold = int(dimensions), index, quantize, int(threshold)
        self.hnsw, self.ivf, self.pq = {**HNSW, **(hnsw or {})}, {**IVF, **(ivf or {})}, dict(pq or {})

        if quantize == "pq":
            m = int(self.pq.get("m") or pqsize(self.dimensions))
            if m <= 0 or self.dimensions % m:
                raise ValueError(f"pq m must divide dimensions ({self.dimensions}), got {m}")
            self.pq["m"] = m

        # Resolved index type, faiss index and ids deleted but still stored (hnsw)
        self.kind, self.backend, self.deleted = None, None, np.zeros(0, dtype=np.int64)

    def index(self, ids, vectors):
        """
        Builds a new index from scratch, training it when needed.

        Args:
            ids: int64 ids
            vectors: float32 (n, dimensions)
        """

        ids, vectors = self.inputs(ids, vectors)

        self.kind = self.type if self.type != "auto" else ("flat" if len(ids) <= self.threshold else "hnsw")
        self.backend = faiss.IndexIDMap2(self.create(len(ids)))
        self.deleted = np.zeros(0, dtype=np.int64)

        if not self.backend.is_trained:
            self.backend.train(vectors)
        self.backend.add_with_ids(vectors, ids)

    def add(self, ids, vectors):
        """
        Adds vectors for new ids. Builds the index when it is empty.

        Args:
            ids: int64 ids
            vectors: float32 (n, dimensions)
        """

        if self.backend is None:
            self.index(ids, vectors)
            return

        ids, vectors = self.inputs(ids, vectors)
        existing = np.intersect1d(ids, faiss.vector_to_array(self.backend.id_map))
        if len(existing):
            raise ValueError(f"Ids already in the index: {existing[:10].tolist()}")

        self.backend.add_with_ids(vectors, ids)

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
            # HNSW graphs cannot drop nodes: remember deleted ids and filter them out at search time
            ids = np.intersect1d(ids, faiss.vector_to_array(self.backend.id_map))
            self.deleted = np.union1d(self.deleted, ids)
        else:
            self.backend.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, queries, limit, efsearch=None, nprobe=None):
        """
        Searches for the best inner product matches.

        Args:
            queries: float32 (nq, dimensions), or one (dimensions,) query
            limit: maximum results per query
            efsearch: HNSW search depth, defaults to the configured efsearch, raised to limit when lower
            nprobe: IVF lists to visit, defaults to the configured nprobe

        Returns:
            (scores float32 (nq, limit), ids int64 (nq, limit)), missing results have id -1 and score -inf
        """

        queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if queries.shape[1] != self.dimensions:
            raise ValueError(f"Queries have {queries.shape[1]} dimensions, index has {self.dimensions}")

        limit = int(limit)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")

        scores, ids = np.full((len(queries), limit), -np.inf, dtype=np.float32), np.full((len(queries), limit), -1, dtype=np.int64)
        if self.backend is None or not self.count() or not limit or not len(queries):
            return scores, ids

        # Search parameters, keeping selector objects referenced until the search is done
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.deleted)) if len(self.deleted) else None
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(int(efsearch or self.hnsw["efsearch"]), limit))
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=int(nprobe or self.ivf["nprobe"]))
        else:
            # Flat codes indexes reject search parameters, and never need a selector: they remove deleted ids
            params = faiss.SearchParameters() if selector is not None else None
        if selector is not None:
            params.sel = selector

        scores, ids = self.backend.search(queries, limit, params=params)

        # Never return deleted ids, even if a selector let one through
        missing = (ids < 0) | np.isin(ids, self.deleted)
        scores[missing], ids[missing] = -np.inf, -1
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

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

        return config

    def save(self, path):
        """
        Saves the index to the directory path: header.json, index.faiss (faiss.write_index) and deleted.npy.

        The files are written into a new temporary sibling directory, which then replaces path with renames (see
        TokenStore.save): a crash leaves the previous save intact.

        Args:
            path: directory path
        """

        path = os.path.abspath(path)
        tmp = files.tempdir(path)
        try:
            if self.backend is not None:
                faiss.write_index(self.backend, os.path.join(tmp, "index.faiss"))
            np.save(os.path.join(tmp, "deleted.npy"), self.deleted, allow_pickle=False)

            header = {
                "format": FORMAT,
                "version": VERSION,
                "dimensions": self.dimensions,
                "count": self.count(),
                "config": {**self.config, "hnsw": self.hnsw, "ivf": self.ivf, "pq": self.pq},
            }
            files.writeheader(tmp, header)

            files.replacedir(tmp, path)
        except BaseException:
            files.remove(tmp)
            raise

    @classmethod
    def load(cls, path):
        """
        Loads an index saved with save.

        Args:
            path: directory path

        Returns:
            FDEIndex
        """

        path = os.path.abspath(path)
        header = files.readheader(os.path.join(path, "header.json"), "FDE index", FORMAT, VERSION)

        config = header["config"]
        index = cls(header["dimensions"], config["index"], config["quantize"], config["threshold"], config["hnsw"], config["ivf"], config["pq"])
        index.kind = config["type"]

        indexfile = os.path.join(path, "index.faiss")
        if index.kind is not None:
            if not os.path.isfile(indexfile):
                raise FileNotFoundError(f"FDE index file missing: {indexfile}")
            try:
                index.backend = faiss.read_index(indexfile)
            except RuntimeError as error:
                raise ValueError(f"Corrupt FDE index file {indexfile}: {error}") from error
            index.deleted = np.load(os.path.join(path, "deleted.npy"), allow_pickle=False).astype(np.int64)

            if index.backend.d != index.dimensions or index.count() != header["count"]:
                raise ValueError(f"FDE index file {indexfile} does not match its header (dimensions, count)")

        return index

    def create(self, count):
        """
        Creates the core faiss index for the resolved type.

        Args:
            count: number of training vectors

        Returns:
            faiss index
        """

        d, metric, kind = self.dimensions, faiss.METRIC_INNER_PRODUCT, self.kind

        # PQ needs at least 2^nbits training points
        nbits = int(self.pq.get("nbits", 8))
        if self.quantize == "pq":
            nbits = max(1, min(nbits, int(math.log2(max(count, 2)))))
            self.pq["nbits"] = nbits

        if kind == "hnsw":
            m = int(self.hnsw["m"])
            if self.quantize == "sq8":
                index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, m, metric)
            elif self.quantize == "pq":
                index = faiss.IndexHNSWPQ(d, self.pq["m"], m, nbits, metric)
            else:
                index = faiss.IndexHNSWFlat(d, m, metric)
            index.hnsw.efConstruction = int(self.hnsw["efconstruction"])
            index.hnsw.efSearch = int(self.hnsw["efsearch"])
            return index

        if kind == "ivf":
            nlist = self.ivf["nlist"] or max(1, min(int(math.sqrt(count)), count // 39))
            nlist = max(1, min(int(nlist), count))
            self.ivf["nlist"] = nlist
            quantizer = faiss.IndexFlatIP(d)
            if self.quantize == "sq8":
                index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, metric)
            elif self.quantize == "pq":
                index = faiss.IndexIVFPQ(quantizer, d, nlist, self.pq["m"], nbits, metric)
            else:
                index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
            index.nprobe = int(self.ivf["nprobe"])

            # The index owns its quantizer
            index.own_fields = True
            quantizer.this.disown()
            return index

        if self.quantize == "sq8":
            return faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, metric)
        if self.quantize == "pq":
            return faiss.IndexPQ(d, self.pq["m"], nbits, metric)

        return faiss.IndexFlatIP(d)

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
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.dimensions or len(vectors) != len(ids):
            raise ValueError(f"Expected {len(ids)} vectors of {self.dimensions} dimensions, got shape {vectors.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("Duplicate ids in batch")

        return ids, vectors


def pqsize(dimensions):
    """
    Default number of PQ sub-quantizers: the largest divisor of dimensions that is <= dimensions / 16.

    Args:
        dimensions: vector dimensions

    Returns:
        int
    """

    return next(m for m in range(max(1, dimensions // 16), 0, -1) if dimensions % m == 0)
