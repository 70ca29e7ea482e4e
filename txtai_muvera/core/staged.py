"""
Staged module: the documents one write has encoded but not yet committed to a storage engine
"""

import tempfile

import numpy as np

from .store import TokenStore


class Staged:
    """
    Encoded documents of one write, held outside the index until the write commits: their index ids, FDE rows (spooled to an
    unnamed temporary file, so a large pass costs disk rather than memory) and token matrices (a spilled token store).
    Iterating yields (ids, fdes, matrices) chunks, the form every storage engine reads.
    """

    def __init__(self, dim, dtype="float16", chunk=1024):
        """
        Creates an empty stage.

        Args:
            dim: token dimension
            dtype: float16 or float32, the precision tokens keep until the engine encodes them with its codec
            chunk: documents per chunk when iterating
        """

        self.store = TokenStore(dim, dtype, spill=True)
        self.spool, self.rows, self.width, self.chunk = None, 0, None, chunk
        self.truncated = 0

    def add(self, ids, fdes, matrices, truncated=0):
        """
        Adds a batch.

        Args:
            ids: int64 index ids, new to this stage
            fdes: float32 (batch, dims)
            matrices: list of float32 (tokens, dim)
            truncated: number of documents cut at the model's document length
        """

        fdes = np.ascontiguousarray(fdes, dtype=np.float32)
        if fdes.ndim != 2 or len(fdes) != len(matrices) or len(ids) != len(matrices) or (self.width is not None and fdes.shape[1] != self.width):
            raise ValueError(f"FDE batch has shape {fdes.shape} for {len(ids)} ids, expected ({len(matrices)}, {self.width or 'dims'})")

        self.store.add(ids, matrices)
        if self.spool is None:
            self.spool, self.width = tempfile.TemporaryFile(), fdes.shape[1]
        self.spool.write(fdes.tobytes())
        self.rows += len(fdes)
        self.truncated += truncated

    def __len__(self):
        return self.rows

    @property
    def ids(self):
        """
        Returns:
            int64 ids in the order they were added
        """

        return self.store.ids

    def vectors(self):
        """
        All FDE rows, memory-mapped from the spool (no copy).

        Returns:
            float32 array (documents, dims)
        """

        if not self.rows:
            return np.zeros((0, self.width or 0), dtype=np.float32)

        self.spool.flush()
        return np.memmap(self.spool, dtype=np.float32, mode="r", shape=(self.rows, self.width))

    def sample(self, size, seed=0):
        """
        A random sample of token rows, for training a codec.

        Args:
            size: maximum rows
            seed: random seed

        Returns:
            float32 (rows, dim)
        """

        # Sample documents, not rows, so that only the sample is ever gathered from the spilled store
        ids, rng = self.ids, np.random.default_rng(seed)
        average = max(self.store.tokens / max(len(ids), 1), 1.0)
        picked = np.sort(rng.choice(ids, min(len(ids), int(np.ceil(size / average)) + 1), replace=False)) if len(ids) else ids
        tokens = np.asarray(self.store.gather(picked)[0], dtype=np.float32)
        return tokens[np.sort(rng.choice(len(tokens), size, replace=False))] if len(tokens) > size else tokens

    def __iter__(self):
        ids, vectors = self.ids, self.vectors()
        for start in range(0, len(ids), self.chunk):
            chunk = ids[start : start + self.chunk]
            tokens, offsets, _ = self.store.gather(chunk)
            matrices = np.split(np.asarray(tokens, dtype=np.float32), offsets[1:-1])
            yield chunk, np.asarray(vectors[start : start + len(chunk)]), matrices

    def close(self):
        """
        Frees the spool and the spilled tokens.
        """

        if self.spool is not None:
            self.spool.close()
        self.spool, self.store = None, None
