"""
TokenStore module
"""

import errno
import mmap as mmapmodule
import os
import tempfile

import numpy as np

from . import codecs as codecmodule
from . import files

# Saved format name and versions: version 1 is the float32 / float16 / int8 layout (tokens.npy, scale.npy), still written for
# those codecs so that older readers load them; version 2 adds trained codecs (their parts and state files)
FORMAT, VERSION, VERSIONS = "txtai-muvera-tokenstore", 2, (1, 2)

# Storage types of the version 1 layout
DTYPES = ("float16", "float32", "int8")

# Documents copied per chunk when saving and transcoding
CHUNK = 4096


class TokenStore:
    """
    Stores one token matrix per document, flat, addressed by integer ids (txtai index ids).

    Rows are encoded by a codec (codecs.CODECS: float32, float16, int8, residual, adaptive, pq) into named parts with one row per token.
    Each part lives in two segments: a read-only base (memory-mapped after load) and an in-memory tail that grows with amortised
    doubling. Each live document has a global start row and a length, so gathering any set of documents is one vectorised index
    operation. Deleting only drops the bookkeeping; dead rows are reclaimed when the store is saved.

    Trained codecs (residual, pq) must be trained before the first add of tokens (`train`, or `transcode` from another store);
    the trained state is kept for every later add, so stored codes never change (see codecs.Residual). Documents without tokens
    can be added before.
    """

    def __init__(self, dim, codec="float16", spill=False, dtype=None, **options):
        """
        Creates an empty store.

        Args:
            dim: token dimension
            codec: codec name, a key of codecs.CODECS (float32, float16, int8, residual, adaptive, pq)
            spill: keep the tail rows in unnamed temporary files, preallocated and memory-mapped, so that a large indexing pass is
                   bounded by disk rather than RAM (the kernel writes the pages back under memory pressure)
            dtype: former name of codec (float16, float32, int8), still accepted
            options: codec options (residual: centroids, bits, buckets, iterations, seed; pq: m)
        """

        if dtype is not None:
            if codec not in ("float16", dtype):
                raise ValueError(f"Give codec or its former name dtype, not both: codec {codec!r}, dtype {dtype!r}")
            codec = dtype

        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")

        # "dtype" in the message: the storage type's name since 0.1.0, which callers match on
        if not isinstance(codec, codecmodule.Codec) and (not isinstance(codec, str) or codec not in codecmodule.CODECS):
            raise ValueError(f"Unknown token store dtype {codec!r}, accepted codecs: {', '.join(codecmodule.CODECS)}")

        self.dim = int(dim)
        self.codec = codec if isinstance(codec, codecmodule.Codec) else codecmodule.create(codec, self.dim, **options)
        if self.codec.dim != self.dim:
            raise ValueError(f"Codec dim {self.codec.dim} does not match store dim {self.dim}")

        # Temporary files that back the tail parts when spilling
        self.spill, self.spillfiles = bool(spill), {}

        # True when the base segment is memory-mapped from a saved store
        self.mmap = False

        # Segments per part: base rows [0, rows(base)), tail rows [rows(base), rows(base) + size)
        self.base = self.empty()
        self.tail, self.size = self.base, 0

        # Live documents in insertion order: ids, global start rows and lengths
        self.docids, self.starts, self.lengths = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)

        # Lookup: sorted ids and their positions, rebuilt lazily when ids are not added in increasing order
        self.lookup, self.directory = None, None

    @property
    def dtype(self):
        """
        Returns:
            dtype name of the tokens gather returns: the codec name for float32 / float16 / int8, float32 for decoded codecs
        """

        return self.codec.name if self.codec.native else "float32"

    @property
    def trained(self):
        """
        Returns:
            True when the codec can encode (always for float32 / float16 / int8)
        """

        return self.codec.trained

    def train(self, sample):
        """
        Trains the codec on a sample of token rows. Only an empty store can be trained: stored codes depend on the trained state.

        Args:
            sample: float32 (n, dim) token rows, e.g. TokenStore.sample of a float16 pass
        """

        if self.rows() or self.size:
            raise RuntimeError(
                f"Token store already holds {len(self)} documents encoded with the current {self.codec.name!r} state: train before adding"
            )

        self.codec.train(sample)

        # Part types can depend on the trained state (e.g. the width of centroid ids)
        self.base = self.empty()
        self.tail, self.spillfiles = self.base, {}

    def add(self, ids, matrices):
        """
        Adds token matrices for new ids.

        Args:
            ids: sequence of int, ids not already live in this store
            matrices: list of (t, dim) float arrays with finite values, t may be 0
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

        # Validate shapes and values before changing anything
        arrays = []
        for uid, matrix in zip(ids.tolist(), matrices):
            matrix = np.asarray(matrix, dtype=np.float32)
            matrix = matrix.reshape(0, self.dim) if matrix.size == 0 else matrix
            if matrix.ndim != 2 or matrix.shape[1] != self.dim:
                raise ValueError(f"Matrix for id {uid} has shape {matrix.shape}, expected (tokens, {self.dim})")
            arrays.append(matrix)

        lengths = np.array([len(x) for x in arrays], dtype=np.int64)
        rows = np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float32)
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            owners = ids[np.searchsorted(np.cumsum(lengths), np.flatnonzero(bad), side="right")]
            raise ValueError(f"Token matrices of ids {np.unique(owners)[:10].tolist()} contain NaN or infinite values: token values must be finite")

        # Documents without tokens need no codec: an untrained store holds them until its first tokens train it
        if not self.trained and len(rows):
            raise RuntimeError(f"Token codec {self.codec.name!r} is not trained: call train(sample) first, or build with TokenStore.transcode")

        # Finite float32 values beyond float16's range would be stored as inf
        codes = self.codec.encode(rows) if self.trained else self.empty()
        tokens = codes.get("tokens")
        if tokens is not None and tokens.dtype == np.float16 and not np.isfinite(tokens).all():
            owners = ids[np.searchsorted(np.cumsum(lengths), np.flatnonzero(~np.isfinite(tokens).all(axis=1)), side="right")]
            raise ValueError(f"Token matrices of ids {np.unique(owners)[:10].tolist()} exceed the float16 range (+-65504): use codec float32")

        self.append(ids, lengths, codes)

    def extend(self, source):
        """
        Adds every live document of another store that shares this store's codec (the same trained instance), copying its codes
        a chunk of documents at a time: nothing is decoded or encoded again. A write whose tokens were encoded as they arrived
        (core/staged.py) commits this way.

        Args:
            source: TokenStore with the same codec object, holding ids not live in this store
        """

        if source.codec is not self.codec:
            raise ValueError(f"Cannot copy codes of a {source.codec.name!r} store into a {self.codec.name!r} store with another trained state")

        ids = source.docids
        live = ids[self.positions(ids) >= 0]
        if len(live):
            raise ValueError(f"Ids already in the token store: {live[:10].tolist()}")

        for start in range(0, len(ids), CHUNK):
            positions = np.arange(start, min(start + CHUNK, len(ids)))
            lengths = source.lengths[positions]
            rows = np.arange(lengths.sum(), dtype=np.int64) + np.repeat(source.starts[positions] - (np.cumsum(lengths) - lengths), lengths)
            self.append(ids[positions], lengths, source.take(rows) if len(rows) else self.empty())
            source.evict()

    def append(self, ids, lengths, codes):
        """
        Appends encoded rows of new documents to the tail and records the documents.

        Args:
            ids: int64 ids, checked new
            lengths: int64 token rows per id
            codes: {part name: array (sum(lengths), *row shape)}
        """

        # Append to tail, growing capacity geometrically so many small batches stay linear
        count = int(lengths.sum())
        start = self.rows() + self.size
        self.reserve(self.size + count)
        for name, array in codes.items():
            self.write(name, self.size, array)
        self.size += count

        # Bookkeeping, keep lookup incremental when ids keep increasing (txtai's case)
        increasing = self.lookup is None and (not len(ids) or not len(self.docids) or ids[0] > self.docids[-1]) and np.all(np.diff(ids) > 0)
        self.docids = np.concatenate([self.docids, ids])
        self.starts = np.concatenate([self.starts, start + np.cumsum(lengths) - lengths])
        self.lengths = np.concatenate([self.lengths, lengths])
        if not increasing:
            self.lookup = self.directory = None
            self.sortlookup()

    def gather(self, ids, decode=True):
        """
        Gathers documents in flat form, for maxsim_flat. float32 / float16 / int8 rows come back as stored; other codecs decode
        the whole block to float32, or with decode False come back as a codecs.Codes block that maxsim_flat scores without
        decoding every row first (the search path).

        Args:
            ids: sequence of live ids
            decode: decode codes that are not scored as stored

        Returns:
            (tokens (T, dim) array or Codes, offsets (len(ids) + 1,) int64, scale (T,) float32 for int8, None otherwise)
        """

        positions = self.locate(ids)
        starts, lengths = self.starts[positions], self.lengths[positions]
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])

        # Global row of every output row
        rows = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)

        # Stored values are not scanned here (a full pass over every gathered row on every search): values are checked when
        # added, files carry checksums, and maxsim_flat rejects NaN/inf in the similarities it computes, at 1/dim of the cost
        # An untrained store holds documents without tokens only
        tokens, scale = self.codec.flat(self.take(rows), decode) if self.trained else (np.zeros((0, self.dim), np.float32), None)
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

    def sample(self, count, seed=42, ids=None):
        """
        Draws token rows uniformly from the live documents, decoded to float32: the training sample for a codec.

        Args:
            count: rows wanted (all rows of the documents when fewer)
            seed: random seed
            ids: live ids to draw from, all live documents when None

        Returns:
            float32 (min(count, tokens), dim)
        """

        # An untrained store holds documents without tokens only
        if not self.trained:
            return np.zeros((0, self.dim), dtype=np.float32)

        positions = slice(None) if ids is None else self.locate(ids)
        starts, lengths = self.starts[positions], self.lengths[positions]
        total = int(lengths.sum())
        picks = np.sort(np.random.default_rng(seed).choice(total, size=min(int(count), total), replace=False))

        # Row number among the documents' rows -> document -> global row, all vectorised
        ends = np.cumsum(lengths)
        documents = np.searchsorted(ends, picks, side="right")
        rows = starts[documents] + picks - (ends[documents] - lengths[documents])

        codes = self.take(rows)
        return self.codec.decode(codes).astype(np.float32, copy=False)

    def counts(self, ids):
        """
        Token rows of each id.

        Args:
            ids: sequence of live ids

        Returns:
            int64 array shaped like ids
        """

        return self.lengths[self.locate(ids)]

    def locate(self, ids):
        """
        Positions of live ids among the documents, raising a KeyError that names the ids that are not live.

        Args:
            ids: sequence of int

        Returns:
            int64 positions
        """

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        positions = self.positions(ids)
        if np.any(positions < 0):
            raise KeyError(f"Ids not in the token store: {ids[positions < 0][:10].tolist()}")

        return positions

    @classmethod
    def transcode(cls, source, codec="residual", sample=65536, seed=42, spill=None, **options):
        """
        Builds a new store with another codec from a source store: trains the codec on `sample` token rows drawn from the source,
        then copies every live document (ids and insertion order kept). The indexing pass spills float16 tokens first and
        transcodes them once it has seen enough of the corpus to train on.

        Args:
            source: TokenStore
            codec: codec name
            sample: training rows drawn from the source
            seed: sampling seed
            spill: spill the new store's tail to disk, defaults to the source's setting
            options: codec options

        Returns:
            TokenStore
        """

        store = cls(source.dim, codec, spill=source.spill if spill is None else spill, **options)
        if not store.trained:
            store.train(source.sample(sample, seed))

        ids = source.ids
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            tokens, offsets, scale = source.gather(chunk)
            tokens = tokens.astype(np.float32) * scale[:, None] if scale is not None else tokens.astype(np.float32, copy=False)
            store.add(chunk, np.split(tokens, offsets[1:-1]))
            source.evict()

        return store

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

    def snapshot(self):
        """
        The state that add and delete change, for restore: they write new rows past the tail's size and replace the document
        arrays, never changing a row or an array that a snapshot refers to. Taking one copies nothing.

        Returns:
            opaque tuple for restore
        """

        return (self.tail, self.spillfiles, self.size, self.docids, self.starts, self.lengths, self.lookup, self.directory)

    def restore(self, snapshot):
        """
        Puts the store back exactly as it was when snapshot was taken, undoing every add and delete since: rows added since stay
        in the tail past its size, to be overwritten by the next add. Codes are never re-encoded. A store trained or saved since
        the snapshot cannot be restored.

        Args:
            snapshot: from snapshot()
        """

        self.tail, self.spillfiles, self.size, self.docids, self.starts, self.lengths, self.lookup, self.directory = snapshot

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
        Bytes held by stored token rows (codes, scales), dead rows included until the next save. Codec state is not counted.

        Returns:
            int
        """

        return (self.rows() + self.size) * self.codec.bytes

    def save(self, path):
        """
        Saves the store to the directory path, dropping dead rows.

        Atomic protocol: everything is written into a new temporary sibling directory (header.json, one .npy per codes part,
        offsets.npy, ids.npy and one codec-<name>.npy per trained state array) and flushed to disk. If path exists, it is
        renamed to a backup sibling, the temporary directory is renamed to path, then the backup is removed. No existing file is
        ever written to, so a store that memory-maps the previous files keeps reading them (on POSIX, unlinked files stay
        readable while mapped). A crash before the first rename leaves the previous save intact; a crash between the two
        renames leaves it in the backup sibling ".<name>.old-<id>", which load names in its error.

        Arrays are written with plain, checked file writes (never through a memory map), so a full disk raises OSError and
        leaves this store as it was. header.json records the CRC-32 of every array file; load verifies them.

        Args:
            path: directory path
        """

        path = os.path.abspath(path)
        ids = self.docids
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        count = int(offsets[-1])

        tmp = files.tempdir(path)
        try:
            # Codes parts are copied a chunk of documents at a time: saving never holds a second copy of the store in memory
            parts = self.codec.parts()
            handles = {name: openarray(os.path.join(tmp, f"{name}.npy"), dtype, (count,) + shape) for name, (dtype, shape) in parts.items()}
            try:
                for start in range(0, len(ids), CHUNK):
                    positions = self.positions(ids[start : start + CHUNK])
                    lengths = self.lengths[positions]
                    rows = np.arange(lengths.sum(), dtype=np.int64) + np.repeat(self.starts[positions] - (np.cumsum(lengths) - lengths), lengths)

                    # A chunk of documents without tokens writes nothing (a memoryview of no bytes cannot be cast)
                    for name, array in self.take(rows).items() if len(rows) else ():
                        handles[name].write(memoryview(np.ascontiguousarray(array, dtype=parts[name][0])).cast("B"))
                    self.evict()
            finally:
                for handle in handles.values():
                    handle.close()

            arrays = {"offsets.npy": offsets, "ids.npy": ids, **{f"codec-{name}.npy": array for name, array in self.codec.state().items()}}
            for name, array in arrays.items():
                np.save(os.path.join(tmp, name), np.ascontiguousarray(array), allow_pickle=False)

            names = [f"{name}.npy" for name in parts] + list(arrays)
            files.writeheader(tmp, self.header(len(ids), count, {name: files.digest(os.path.join(tmp, name)) for name in names}))

            files.replacedir(tmp, path)
        except BaseException:
            files.remove(tmp)
            raise

        # Continue from the compacted arrays: memory-map the new files when this store was memory-mapped or spilled to disk,
        # read them into memory otherwise
        mmap = self.mmap or self.spill
        parts = {name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r" if mmap else None, allow_pickle=False) for name in parts}
        if mmap:
            for array in parts.values():
                randomaccess(array)
        self.mmap = mmap
        self.reset(parts, ids, offsets)

    def header(self, documents, tokens, checksums):
        """
        Builds the saved header. float32 / float16 / int8 stores keep the version 1 layout and version number, so that readers
        of that version still load them (they ignore the added keys).

        Args:
            documents: saved documents
            tokens: saved token rows
            checksums: {file name: CRC-32}

        Returns:
            dict
        """

        native = self.codec.name in DTYPES
        return {
            "format": FORMAT,
            "version": 1 if native else VERSION,
            "dim": self.dim,
            "dtype": self.codec.name if native else None,
            "codec": self.codec.config,
            "bytes": self.codec.bytes,
            "documents": int(documents),
            "tokens": int(tokens),
            "scale": "int8 rows: value = int8 * scale[row], scale = max|x| / 127 (1 for zero rows)" if self.codec.name == "int8" else None,
            "state": sorted(self.codec.state()),
            "checksums": checksums,
        }

    @classmethod
    def load(cls, path, mmap=True, verify=True):
        """
        Loads a store saved with save. Header, checksums and array shapes are checked before the arrays are trusted.

        Args:
            path: directory path
            mmap: memory-map the codes arrays read-only if True, read them into memory otherwise
            verify: check every array file against the CRC-32 recorded in the header (a full read of each file)

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
        codec = (
            codecmodule.create(header["dtype"], header["dim"]) if header["version"] == 1 else codecmodule.fromconfig(header["codec"], header["dim"])
        )
        documents, count = header["documents"], header["tokens"]

        # Checksums first: a flipped bit must fail here, naming the file, before any value is trusted
        checksums = header.get("checksums")
        names = [f"{name}.npy" for name in codec.parts()] + ["offsets.npy", "ids.npy"] + [f"codec-{name}.npy" for name in header.get("state", [])]
        if verify and checksums is not None:
            for name in names:
                file = os.path.join(path, name)
                if name not in checksums:
                    raise ValueError(f"Token store header {os.path.join(path, 'header.json')} has no checksum for {name}")
                if os.path.isfile(file) and files.digest(file) != checksums[name]:
                    raise ValueError(f"Checksum mismatch in token store file {file}: the file is corrupt (changed or damaged after it was saved)")

        if header.get("state"):
            codec.restore({name: readarray(os.path.join(path, f"codec-{name}.npy"), None, "float32", False) for name in header["state"]})
        elif not codec.trained and count:
            raise ValueError(f"Token store {path} uses codec {codec.name!r} but holds no trained state")

        parts = {name: readarray(os.path.join(path, f"{name}.npy"), (count,) + shape, dtype, mmap) for name, (dtype, shape) in codec.parts().items()}
        offsets = readarray(os.path.join(path, "offsets.npy"), (documents + 1,), "int64", False)
        ids = readarray(os.path.join(path, "ids.npy"), (documents,), "int64", False)

        if offsets[0] != 0 or offsets[-1] != count or np.any(np.diff(offsets) < 0):
            raise ValueError(f"Corrupt offsets in {os.path.join(path, 'offsets.npy')}: must rise from 0 to {count}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"Corrupt ids in {os.path.join(path, 'ids.npy')}: duplicate ids")

        store = cls(header["dim"], codec)
        store.reset(parts, ids, offsets)
        store.mmap = mmap
        return store

    def reset(self, parts, ids, offsets):
        """
        Replaces the contents with a compact base segment.

        Args:
            parts: {part name: codes array}
            ids: (n,) int64 ids, in insertion order
            offsets: (n + 1,) int64 row boundaries
        """

        self.base = parts
        self.tail, self.spillfiles, self.size = self.empty(), {}, 0

        self.docids = np.array(ids, dtype=np.int64)
        self.starts, self.lengths = np.array(offsets[:-1], dtype=np.int64), np.diff(offsets).astype(np.int64)
        self.lookup = self.directory = None
        if np.any(np.diff(self.docids) <= 0):
            self.sortlookup()

    def empty(self):
        """
        Returns:
            {part name: empty array} for the codec's parts
        """

        return {name: np.zeros((0,) + shape, dtype=dtype) for name, (dtype, shape) in self.codec.parts().items()}

    def rows(self):
        """
        Returns:
            rows in the base segment
        """

        return len(next(iter(self.base.values())))

    def take(self, rows):
        """
        Takes global rows from the base and tail segments of every part.

        Args:
            rows: int64 global rows

        Returns:
            {part name: array (len(rows), *row shape)}
        """

        base = self.rows()
        inbase = rows < base

        # Common cases take rows from one segment with a single take
        if inbase.all() or not inbase.any():
            segment, rows = (self.base, rows) if inbase.all() else (self.tail, rows - base)
            return {name: np.take(array, rows, axis=0) for name, array in segment.items()}

        codes = {}
        for name, array in self.base.items():
            codes[name] = np.empty((len(rows),) + array.shape[1:], dtype=array.dtype)
            codes[name][inbase], codes[name][~inbase] = array[rows[inbase]], self.tail[name][rows[~inbase] - base]

        return codes

    def reserve(self, size):
        """
        Makes sure the tail segment can hold size rows, doubling its capacity as needed. When spilling, the files are
        preallocated before they are mapped: a full disk fails here with OSError instead of killing the process with SIGBUS when
        a mapped page cannot be written back. On any error the tail stays as it was.

        Args:
            size: rows needed
        """

        current = len(next(iter(self.tail.values())))
        if size <= current:
            return

        capacity = max(size, 2 * current, 1024)
        tail, spillfiles = {}, {}
        for name, (dtype, shape) in self.codec.parts().items():
            if self.spill:
                # Grow the file and map it again: rows already written stay in the file, nothing is copied
                handle = self.spillfiles.get(name) if self.size else None
                handle = handle or tempfile.TemporaryFile()
                preallocate(handle, capacity * np.dtype(dtype).itemsize * int(np.prod(shape)))
                tail[name], spillfiles[name] = np.memmap(handle, dtype=dtype, mode="r+", shape=(capacity,) + shape), handle
            else:
                tail[name] = np.empty((capacity,) + shape, dtype=dtype)
                tail[name][: self.size] = self.tail[name][: self.size]

        self.tail, self.spillfiles = tail, spillfiles

    def evict(self):
        """
        Drops the pages of memory-mapped segments (a loaded store's base, a spilled tail) from this process's resident memory,
        after a pass over many of them: saving, copying, transcoding. They stay in the page cache.
        """

        for array in (*self.base.values(), *self.tail.values()):
            files.evict(array)

    def write(self, name, row, array):
        """
        Writes rows of a part into the tail from tail row `row` on. A spilled tail is written with plain file writes: pages
        written through the memory map would count in this process's resident memory until the kernel writes them back, a
        whole indexing pass of them; written to the file they are page cache only. The map sees them (same pages).

        Args:
            name: part name
            row: first tail row
            array: rows
        """

        handle = self.spillfiles.get(name)
        if handle is None:
            self.tail[name][row : row + len(array)] = array
            return

        # Documents without tokens write nothing (a memoryview of no bytes cannot be cast)
        if not len(array):
            return

        array = np.ascontiguousarray(array, dtype=self.tail[name].dtype)
        offset, data = row * array[:1].nbytes, memoryview(array).cast("B")
        while len(data):
            written = os.pwrite(handle.fileno(), data, offset)
            data, offset = data[written:], offset + written

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

    header = files.readjson(path, "token store header")
    if header.get("format") != FORMAT:
        raise ValueError(f"Not a token store header {path}: format {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("version") not in VERSIONS:
        raise ValueError(f"token store at {path} has version {header.get('version')!r}; this txtai-muvera reads versions 1 and 2")

    if header["version"] == 1 and header.get("dtype") not in DTYPES:
        raise ValueError(f"Unknown dtype {header.get('dtype')!r} in {path}, accepted: {', '.join(DTYPES)}")
    if header["version"] == 2 and not isinstance(header.get("codec"), dict):
        raise ValueError(f"Missing codec config in {path}")
    if header["version"] == 2 and not isinstance(header.get("checksums"), dict):
        raise ValueError(f"Missing checksums in {path}")
    for key in ("dim", "documents", "tokens"):
        if isinstance(header.get(key), bool) or not isinstance(header.get(key), int) or header[key] < (1 if key == "dim" else 0):
            raise ValueError(f"Invalid {key} {header.get(key)!r} in {path}")
    if not isinstance(header.get("state", []), list) or not all(isinstance(x, str) and x.isidentifier() for x in header.get("state", [])):
        raise ValueError(f"Invalid state list {header.get('state')!r} in {path}")

    return header


def readarray(path, shape, dtype, mmap):
    """
    Loads a .npy array and checks its shape and dtype against the header.

    Args:
        path: .npy path
        shape: expected shape, None to accept any
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

    if (shape is not None and array.shape != shape) or array.dtype != np.dtype(dtype):
        raise ValueError(f"Token store file {path} holds {array.dtype}{array.shape}, header says {dtype}{shape or ''}")

    return array


def openarray(path, dtype, shape):
    """
    Creates a .npy file with its header written, open for appending the rows with plain writes.

    Args:
        path: .npy path
        dtype: array dtype
        shape: full array shape

    Returns:
        open binary file
    """

    handle = open(path, "wb")
    try:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(int(x) for x in shape)}
        np.lib.format.write_array_header_1_0(handle, header)
    except BaseException:
        handle.close()
        raise

    return handle


def preallocate(handle, size):
    """
    Makes sure a file has size bytes with its disk blocks allocated, so that writes through a memory map cannot fail later.

    Args:
        handle: open file
        size: bytes
    """

    descriptor = handle.fileno()
    current = os.fstat(descriptor).st_size
    if size <= current:
        return

    try:
        os.posix_fallocate(descriptor, current, size - current)
        return
    except AttributeError:
        pass
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise

    # No fallocate on this platform or file system: write zeros, each write checked
    os.lseek(descriptor, current, os.SEEK_SET)
    block = bytes(1 << 20)
    while current < size:
        current += os.write(descriptor, block[: min(len(block), size - current)])


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
