"""
TokenStore module
"""

import mmap as mmapmodule
import os
import tempfile

import numpy as np

from . import files

# Saved format name and version, checked at load
FORMAT, VERSION = "txtai-muvera-tokenstore", 1

# Accepted storage types
DTYPES = ("float16", "float32", "int8")


class TokenStore:
    """
    Stores one token matrix per document, flat, addressed by integer ids (txtai index ids).

    Rows live in two segments: a read-only base (memory-mapped after load) and an in-memory tail that grows with
    amortised doubling. Each live document has a global start row and a length, so gathering any set of documents is one
    vectorised index operation. Deleting only drops the bookkeeping; dead rows are reclaimed when the store is saved.

    int8 storage keeps a float32 scale per token row: scale = max|x| / 127 (1 for zero rows), q = round(x / scale).
    """

    def __init__(self, dim, dtype="float16", spill=False):
        """
        Creates an empty store.

        Args:
            dim: token dimension
            dtype: storage type, one of float16, float32, int8
            spill: keep the tail rows in an unnamed, memory-mapped temporary file instead of anonymous memory, so that a large
                   indexing pass is bounded by disk rather than RAM (the kernel writes the pages back under memory pressure)
        """

        if dtype not in DTYPES:
            raise ValueError(f"Unknown token store dtype {dtype!r}, accepted: {', '.join(DTYPES)}")
        if int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim}")

        self.dim, self.dtype = int(dim), dtype

        # Temporary file that backs the tail when spilling
        self.spill, self.spillfile = bool(spill), None

        # True when the base segment is memory-mapped from a saved store
        self.mmap = False

        # Segments: base rows [0, len(base)), tail rows [len(base), len(base) + size)
        self.base, self.basescale = np.zeros((0, self.dim), dtype=dtype), np.zeros(0, np.float32) if dtype == "int8" else None
        self.tail, self.tailscale, self.size = self.base, self.basescale, 0

        # Live documents in insertion order: ids, global start rows and lengths
        self.docids, self.starts, self.lengths = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)

        # Lookup: sorted ids and their positions, rebuilt lazily when ids are not added in increasing order
        self.lookup, self.directory = None, None

    def add(self, ids, matrices):
        """
        Adds token matrices for new ids.

        Args:
            ids: sequence of int, ids not already live in this store
            matrices: list of (t, dim) float arrays, t may be 0
        """

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(matrices):
            raise ValueError(f"Got {len(ids)} ids for {len(matrices)} matrices")
        unique, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"Duplicate ids in batch: {unique[counts > 1][:10].tolist()}")

        live = ids[self.positions(ids) >= 0]
        if len(live):
            raise ValueError(f"Ids already in the token store: {live[:10].tolist()}")

        # Validate shapes before changing anything
        arrays = []
        for uid, matrix in zip(ids.tolist(), matrices):
            matrix = np.asarray(matrix, dtype=np.float32)
            matrix = matrix.reshape(0, self.dim) if matrix.size == 0 else matrix
            if matrix.ndim != 2 or matrix.shape[1] != self.dim:
                raise ValueError(f"Matrix for id {uid} has shape {matrix.shape}, expected (tokens, {self.dim})")
            arrays.append(matrix)

        lengths = np.array([len(x) for x in arrays], dtype=np.int64)
        rows = np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float32)
        tokens, scale = self.encode(rows)

        # Append to tail, growing capacity geometrically so many small batches stay linear
        start = len(self.base) + self.size
        self.reserve(self.size + len(rows))
        self.tail[self.size : self.size + len(rows)] = tokens
        if scale is not None:
            self.tailscale[self.size : self.size + len(rows)] = scale
        self.size += len(rows)

        # Bookkeeping, keep lookup incremental when ids keep increasing (txtai's case)
        increasing = self.lookup is None and (not len(ids) or not len(self.docids) or ids[0] > self.docids[-1]) and np.all(np.diff(ids) > 0)
        self.docids = np.concatenate([self.docids, ids])
        self.starts = np.concatenate([self.starts, start + np.cumsum(lengths) - lengths])
        self.lengths = np.concatenate([self.lengths, lengths])
        if not increasing:
            self.lookup = self.directory = None
            self.sortlookup()

    def gather(self, ids):
        """
        Gathers documents in flat form, for maxsim_flat.

        Args:
            ids: sequence of live ids

        Returns:
            (tokens (T, dim) in the stored dtype, offsets (len(ids) + 1,) int64, scale (T,) float32 or None)
        """

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        positions = self.positions(ids)
        if np.any(positions < 0):
            raise KeyError(f"Ids not in the token store: {ids[positions < 0][:10].tolist()}")

        starts, lengths = self.starts[positions], self.lengths[positions]
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])

        # Global row of every output row, then split between base and tail segments
        rows = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
        inbase = rows < len(self.base)

        # Common cases take rows from one segment with a single take
        base = len(self.base)
        if inbase.all() or not inbase.any():
            tokens, scale, rows = (self.base, self.basescale, rows) if inbase.all() else (self.tail, self.tailscale, rows - base)
            tokens = np.take(tokens, rows, axis=0)
            scale = np.take(scale, rows) if scale is not None else None
        else:
            tokens = np.empty((len(rows), self.dim), dtype=self.dtype)
            tokens[inbase], tokens[~inbase] = self.base[rows[inbase]], self.tail[rows[~inbase] - base]
            scale = None
            if self.dtype == "int8":
                scale = np.empty(len(rows), dtype=np.float32)
                scale[inbase], scale[~inbase] = self.basescale[rows[inbase]], self.tailscale[rows[~inbase] - base]

        return tokens, offsets, scale

    def get(self, uid):
        """
        Gets one document's token matrix as float32.

        Args:
            uid: live id

        Returns:
            (t, dim) float32 array
        """

        tokens, _, scale = self.gather([uid])
        tokens = tokens.astype(np.float32)
        return tokens * scale[:, None] if scale is not None else tokens

    def delete(self, ids):
        """
        Deletes ids. Unknown ids are ignored. Rows are reclaimed at the next save.

        Args:
            ids: sequence of int
        """

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        positions = self.positions(ids)
        positions = positions[positions >= 0]
        if len(positions):
            keep = np.ones(len(self.docids), dtype=bool)
            keep[positions] = False
            self.docids, self.starts, self.lengths = self.docids[keep], self.starts[keep], self.lengths[keep]
            if self.lookup is not None:
                self.sortlookup()

    def __contains__(self, uid):
        try:
            return bool(self.positions(np.array([uid], dtype=np.int64))[0] >= 0)
        except (TypeError, ValueError, OverflowError):
            return False

    def __len__(self):
        return len(self.docids)

    @property
    def ids(self):
        """
        Live ids in insertion order.

        Returns:
            int64 array
        """

        return self.docids.copy()

    @property
    def tokens(self):
        """
        Number of live token rows.

        Returns:
            int
        """

        return int(self.lengths.sum())

    @property
    def nbytes(self):
        """
        Bytes held by token rows and scales, dead rows included until the next save.

        Returns:
            int
        """

        rows = len(self.base) + self.size
        return rows * self.dim * np.dtype(self.dtype).itemsize + (rows * 4 if self.dtype == "int8" else 0)

    def save(self, path):
        """
        Saves the store to the directory path, dropping dead rows.

        Atomic protocol: everything is written into a new temporary sibling directory (header.json, tokens.npy,
        offsets.npy, ids.npy, scale.npy for int8) and flushed to disk. If path exists, it is renamed to a backup sibling,
        the temporary directory is renamed to path, then the backup is removed. No existing file is ever written to, so a
        store that memory-maps the previous files keeps reading them (on POSIX, unlinked files stay readable while mapped).
        A crash before the first rename leaves the previous save intact; a crash between the two renames leaves it in
        the backup sibling ".<name>.old-<id>", which load names in its error.

        Args:
            path: directory path
        """

        path = os.path.abspath(path)
        ids = self.docids
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])

        tmp = files.tempdir(path)
        try:
            # Tokens (and int8 scales) are copied in chunks of documents into memory-mapped .npy files: saving never holds a
            # second copy of the store in memory
            tokens = np.lib.format.open_memmap(os.path.join(tmp, "tokens.npy"), mode="w+", dtype=self.dtype, shape=(int(offsets[-1]), self.dim))
            scale = (
                np.lib.format.open_memmap(os.path.join(tmp, "scale.npy"), mode="w+", dtype=np.float32, shape=(int(offsets[-1]),))
                if self.dtype == "int8"
                else None
            )
            for start in range(0, len(ids), 4096):
                rows, _, scales = self.gather(ids[start : start + 4096])
                tokens[offsets[start] : offsets[start] + len(rows)] = rows
                if scale is not None:
                    scale[offsets[start] : offsets[start] + len(rows)] = scales

            for array in [tokens, scale]:
                if array is not None:
                    array.flush()

            for name, array in {"offsets.npy": offsets, "ids.npy": ids}.items():
                np.save(os.path.join(tmp, name), np.ascontiguousarray(array), allow_pickle=False)

            header = {
                "format": FORMAT,
                "version": VERSION,
                "dim": self.dim,
                "dtype": self.dtype,
                "documents": int(len(ids)),
                "tokens": int(len(tokens)),
                "scale": "int8 rows: value = int8 * scale[row], scale = max|x| / 127 (1 for zero rows)" if scale is not None else None,
            }
            files.writeheader(tmp, header)

            files.replacedir(tmp, path)
        except BaseException:
            files.remove(tmp)
            raise

        # Continue from the compacted arrays: memory-map the new files when this store was memory-mapped or spilled to disk,
        # read them into memory otherwise
        tokens = np.load(os.path.join(path, "tokens.npy"), mmap_mode="r" if self.mmap or self.spill else None, allow_pickle=False)
        if self.mmap or self.spill:
            randomaccess(tokens)
        scale = np.array(scale) if scale is not None else None
        self.mmap = self.mmap or self.spill
        self.reset(tokens, scale, ids, offsets)

    @classmethod
    def load(cls, path, mmap=True):
        """
        Loads a store saved with save. Header and array shapes are checked before the arrays are trusted.

        Args:
            path: directory path
            mmap: memory-map the token array read-only if True, read it into memory otherwise

        Returns:
            TokenStore
        """

        path = os.path.abspath(path)
        if not os.path.isdir(path):
            parent, name = os.path.split(path)
            backups = [x for x in os.listdir(parent) if x.startswith(f".{name}.old-")] if os.path.isdir(parent) else []
            hint = f" (an interrupted save left a backup: {os.path.join(parent, backups[0])})" if backups else ""
            raise FileNotFoundError(f"Token store directory not found: {path}{hint}")

        header = readheader(os.path.join(path, "header.json"))
        store = cls(header["dim"], header["dtype"])
        documents, count = header["documents"], header["tokens"]

        tokens = readarray(os.path.join(path, "tokens.npy"), (count, store.dim), store.dtype, mmap)
        offsets = readarray(os.path.join(path, "offsets.npy"), (documents + 1,), "int64", False)
        ids = readarray(os.path.join(path, "ids.npy"), (documents,), "int64", False)
        scale = readarray(os.path.join(path, "scale.npy"), (count,), "float32", False) if store.dtype == "int8" else None

        if offsets[0] != 0 or offsets[-1] != count or np.any(np.diff(offsets) < 0):
            raise ValueError(f"Corrupt offsets in {os.path.join(path, 'offsets.npy')}: must rise from 0 to {count}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"Corrupt ids in {os.path.join(path, 'ids.npy')}: duplicate ids")

        store.reset(tokens, scale, ids, offsets)
        store.mmap = mmap
        return store

    def reset(self, tokens, scale, ids, offsets):
        """
        Replaces the contents with a compact base segment.

        Args:
            tokens: (T, dim) tokens in the stored dtype
            scale: (T,) float32 or None
            ids: (n,) int64 ids, in insertion order
            offsets: (n + 1,) int64 row boundaries
        """

        self.base, self.basescale = tokens, scale
        self.tail, self.spillfile = np.zeros((0, self.dim), dtype=self.dtype), None
        self.tailscale = np.zeros(0, np.float32) if self.dtype == "int8" else None
        self.size = 0

        self.docids = np.array(ids, dtype=np.int64)
        self.starts, self.lengths = np.array(offsets[:-1], dtype=np.int64), np.diff(offsets).astype(np.int64)
        self.lookup = self.directory = None
        if np.any(np.diff(self.docids) <= 0):
            self.sortlookup()

    def encode(self, rows):
        """
        Converts float32 rows to the stored dtype.

        Args:
            rows: (t, dim) float32

        Returns:
            (tokens, scale), scale is None unless dtype is int8
        """

        if self.dtype != "int8":
            return rows.astype(self.dtype), None

        scale = (np.abs(rows).max(axis=1) / 127).astype(np.float32) if len(rows) else np.zeros(0, np.float32)
        scale[scale == 0] = 1.0
        return np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8), scale

    def reserve(self, size):
        """
        Makes sure the tail segment can hold size rows, doubling its capacity as needed.

        Args:
            size: rows needed
        """

        if size > len(self.tail):
            capacity = max(size, 2 * len(self.tail), 1024)
            if self.spill:
                # Grow the file and map it again: rows already written stay in the file, nothing is copied
                if self.spillfile is None or not self.size:
                    self.spillfile = tempfile.TemporaryFile()
                self.spillfile.truncate(capacity * self.dim * np.dtype(self.dtype).itemsize)
                self.tail = np.memmap(self.spillfile, dtype=self.dtype, mode="r+", shape=(capacity, self.dim))
            else:
                tail = np.empty((capacity, self.dim), dtype=self.dtype)
                tail[: self.size] = self.tail[: self.size]
                self.tail = tail
            if self.dtype == "int8":
                scale = np.empty(capacity, dtype=np.float32)
                scale[: self.size] = self.tailscale[: self.size]
                self.tailscale = scale

    def positions(self, ids):
        """
        Finds the positions of ids among live documents.

        Args:
            ids: int64 array

        Returns:
            int64 array of positions, -1 for ids not live
        """

        # Ids are sorted already when they were added in increasing order
        keys, directory = (self.docids, None) if self.lookup is None else (self.lookup, self.directory)
        if not len(keys):
            return np.full(len(ids), -1, dtype=np.int64)

        index = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        found = keys[index] == ids
        index = directory[index] if directory is not None else index

        return np.where(found, index, -1).astype(np.int64)

    def sortlookup(self):
        """
        Builds the sorted id lookup used when ids are not in increasing insertion order.
        """

        if np.all(np.diff(self.docids) > 0):
            self.lookup = self.directory = None
        else:
            self.directory = np.argsort(self.docids, kind="stable")
            self.lookup = self.docids[self.directory]


def readheader(path):
    """
    Reads and checks a token store header.

    Args:
        path: header.json path

    Returns:
        header dict
    """

    header = files.readheader(path, "token store", FORMAT, VERSION)
    if header.get("dtype") not in DTYPES:
        raise ValueError(f"Unknown dtype {header.get('dtype')!r} in {path}, accepted: {', '.join(DTYPES)}")
    for key in ("dim", "documents", "tokens"):
        if not isinstance(header.get(key), int) or header[key] < (1 if key == "dim" else 0):
            raise ValueError(f"Invalid {key} {header.get(key)!r} in {path}")

    return header


def readarray(path, shape, dtype, mmap):
    """
    Loads a .npy array and checks its shape and dtype against the header.

    Args:
        path: .npy path
        shape: expected shape
        dtype: expected dtype
        mmap: memory-map read-only if True

    Returns:
        array
    """

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Token store file missing: {path}")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"Corrupt or truncated token store file {path}: {error}") from error

    if mmap:
        randomaccess(array)

    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise ValueError(f"Token store file {path} holds {array.dtype}{array.shape}, header says {dtype}{shape}")

    return array


def randomaccess(array):
    """
    Advises the kernel that a memory-mapped array is read at random: searches gather scattered documents, and read-ahead
    around each of them would pull most of the file into memory.

    Args:
        array: np.memmap
    """

    advise = getattr(getattr(array, "_mmap", None), "madvise", None)
    if advise and hasattr(mmapmodule, "MADV_RANDOM"):
        advise(mmapmodule.MADV_RANDOM)
