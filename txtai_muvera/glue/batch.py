"""
Batch module: the objects that carry encodings from the vectors model to the index backend through txtai's scoring
"""

import tempfile

import numpy as np

from ..core.store import TokenStore


class Queries(np.ndarray):
    """
    Query FDEs (one row per query) that also carry the query token matrices. txtai's Sparse scoring hands only this array to
    its index backend, so the token matrices that exact re-ranking needs travel as an attribute of the array itself.
    """

    def __new__(cls, fdes, tokens):
        array = np.asarray(fdes, dtype=np.float32).view(cls)
        array.tokens = list(tokens)
        return array

    def __array_finalize__(self, obj):
        # Slices and views keep the token matrices of the original batch
        # pylint: disable=W0201
        self.tokens = getattr(obj, "tokens", None)


class Encoded:
    """
    Documents encoded by one indexing pass: FDE batches, token matrices (already in the storage dtype) and the settings that
    produced them. Ids are positions 0..n-1 in the pass; the index backend maps them onto txtai index ids.
    """

    def __init__(self, settings, dtype="float16"):
        """
        Creates an empty accumulator.

        Args:
            settings: resolved vectors settings (model, muvera, fingerprint, dim)
            dtype: token storage dtype
        """

        self.settings = settings
        self.store = TokenStore(settings["dim"], dtype, spill=True)

        # FDE batches are spooled to an unnamed temporary file, not kept in memory: a pass holds them once, memory-mapped
        self.spool, self.rows, self.width = None, 0, None
        self.truncated = 0

        # Documents taken from txtai's stream (encoded or not) and the error that stopped encoding, if any
        self.streamed = 0
        self.error = None

    def add(self, fdes, tokens, truncated=0):
        """
        Adds a batch.

        Args:
            fdes: FDE array (batch, dims)
            tokens: list of token matrices
            truncated: number of documents cut at the model's document length
        """

        fdes = np.ascontiguousarray(fdes, dtype=np.float32)
        if fdes.ndim != 2 or len(fdes) != len(tokens) or (self.width is not None and fdes.shape[1] != self.width):
            raise ValueError(f"FDE batch has shape {fdes.shape}, expected ({len(tokens)}, {self.width or 'dims'})")

        start = len(self.store)
        self.store.add(np.arange(start, start + len(tokens)), tokens)

        if self.spool is None:
            self.spool, self.width = tempfile.TemporaryFile(), fdes.shape[1]
        self.spool.write(fdes.tobytes())
        self.rows += len(fdes)
        self.truncated += truncated

    def __len__(self):
        return len(self.store)

    def vectors(self):
        """
        All FDEs of the pass as one array.

        Returns:
            float32 array (documents, dims)
        """

        if not self.rows:
            return np.zeros((0, self.width or 0), dtype=np.float32)

        # Read-only map of the spool file: the file is unnamed, the mapping keeps it alive as long as the array lives
        self.spool.flush()
        return np.memmap(self.spool, dtype=np.float32, mode="r", shape=(self.rows, self.width))
