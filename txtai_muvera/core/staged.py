"""
Staged module: the documents one write has encoded but not yet committed to a storage engine
"""

import tempfile

import numpy as np

from . import files
from .store import TokenStore

# Token rows sampled to train a codec that needs training (residual, pq): by a stage, or by an engine at commit (filestorage,
# pgvector) when the write stayed in floats
SAMPLE = 65536

# Token rows a stage holds as floats before it trains the codec it encodes to (see Staged): its sample is drawn from them
ROWS = 4 * SAMPLE


class Staged:
    """
    Encoded documents of one write, held outside the index until the write commits: their index ids, FDE rows (spooled to an
    unnamed temporary file, so a large pass costs disk rather than memory) and token matrices (a spilled token store).
    Iterating yields (ids, fdes, matrices) chunks, the form every storage engine reads.

    Given the codec the engine stores tokens with, the stage streams: a trained codec (the index's own, for an upsert) encodes
    every batch as it arrives; an untrained one is trained once the stage holds ROWS float token rows (on SAMPLE of them, drawn
    at random), which are then encoded, and every later batch as it arrives. The stage then holds the engine's codes, which the
    engine adopts or copies at commit without encoding again, and never the whole write as floats. A write that ends before
    ROWS rows stays in floats and the engine trains on all of it, as without a codec.
    """

    def __init__(self, dim, dtype="float16", chunk=1024, codec=None, fdes="float32"):
        """
        Creates an empty stage.

        Args:
            dim: token dimension
            dtype: float16 or float32, the precision tokens keep until they are encoded
            chunk: documents per chunk when iterating
            codec: codecs.Codec the engine stores tokens with, None to keep float tokens until the commit
            fdes: float32 or float16, the precision of spooled FDE rows (float16 halves the spool when the FDE index quantizes
                  them anyway)
        """

        # A trained codec encodes from the first batch on
        self.store = TokenStore(dim, codec if codec is not None and codec.trained else dtype, spill=True)
        self.codec = codec
        self.spool, self.rows, self.width, self.chunk, self.fdetype = None, 0, None, chunk, np.dtype(fdes)
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
        self.spool.write(fdes.astype(self.fdetype, copy=False).tobytes())
        self.rows += len(fdes)
        self.truncated += truncated

        if self.codec is not None and self.store.codec is not self.codec and (self.codec.trained or self.store.tokens >= ROWS):
            self.encode()

    def encode(self):
        """
        Trains the codec when it needs it, on a sample of the float rows held, and re-encodes them with it: every later batch is
        encoded as it arrives.
        """

        store = TokenStore(self.store.dim, self.codec, spill=True)
        if not store.trained:
            store.train(self.sample(SAMPLE))
        for ids, _, matrices in self:
            store.add(ids, matrices)
        self.store = store

    @property
    def encoded(self):
        """
        Returns:
            True when the tokens are held in the codec's codes
        """

        return self.codec is not None and self.store.codec is self.codec

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
            array (documents, dims) of the spool's precision
        """

        if not self.rows:
            return np.zeros((0, self.width or 0), dtype=np.float32)

        self.spool.flush()
        return np.memmap(self.spool, dtype=self.fdetype, mode="r", shape=(self.rows, self.width))

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
            fdes = np.array(vectors[start : start + len(chunk)], dtype=np.float32)
            self.store.evict()
            files.evict(vectors)
            yield chunk, fdes, matrices

    def close(self):
        """
        Frees the spool and the spilled tokens.
        """

        if self.spool is not None:
            self.spool.close()
        self.spool, self.store = None, None
