"""
Batch module: the objects that carry encodings from the vectors model to the index backend through txtai's scoring
"""

import numpy as np

from .store import TokenStore


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
        self.fdes = []
        self.store = TokenStore(settings["dim"], dtype)
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

        start = len(self.store)
        self.store.add(np.arange(start, start + len(tokens)), tokens)
        self.fdes.append(np.asarray(fdes, dtype=np.float32))
        self.truncated += truncated

    def __len__(self):
        return len(self.store)

    def vectors(self):
        """
        All FDEs of the pass as one array.

        Returns:
            float32 array (documents, dims)
        """

        return np.concatenate(self.fdes) if self.fdes else np.zeros((0, 0), dtype=np.float32)
