"""
FileStorage module: the storage engine that keeps FDEs in a faiss index and token matrices in a token store, in files
"""

import os

import numpy as np

from .ann import FDEIndex
from .staged import Staged
from .storage import Storage
from .store import TokenStore

# Token rows sampled to train a codec that needs training (residual, pq) when its own setting does not say
SAMPLE = 65536


class FileStorage(Storage):
    """
    FDEs in an FDEIndex (faiss), token matrices in a TokenStore, both keyed by index ids and saved as two folders (`fdes/`,
    `tokens/`) of the index directory, the layout txtai-muvera 0.1.0 wrote.

    Settings read from the scoring config: `ann` (FDEIndex options), `tokens` (token codec name) and the codec's options in the
    sub-dict named after it (e.g. `residual: {nbits: 2}`).
    """

    def __init__(self, config, dimensions, dim):
        super().__init__(config, dimensions, dim)
        self.fdes, self.store = None, None

    def apply(self, deletes, batches):
        if self.fdes is None:
            self.build(batches)
            return

        # Tokens first, then all FDEs in one faiss call, deletes last: nothing old is removed until every new row is in, and
        # a failure removes the token rows it added (faiss HNSW cannot remove ids, so FDEs are never added and rolled back)
        staged = batches if isinstance(batches, Staged) else self.stage(batches)
        added = []
        try:
            self.train(self.store, staged)
            for ids, _, matrices in staged:
                self.store.add(ids, matrices)
                added.append(ids)
            if len(staged):
                self.fdes.add(staged.ids, staged.vectors())
        except BaseException:
            if added:
                self.store.delete(np.concatenate(added))
            raise

        deletes = np.asarray(deletes, dtype=np.int64).reshape(-1)
        deletes = deletes[np.isin(deletes, self.store.ids)] if len(deletes) else deletes
        if len(deletes):
            # Token rows are kept aside so that a failure in the FDE index puts them back
            tokens, offsets, _ = self.store.gather(deletes)
            self.store.delete(deletes)
            try:
                self.fdes.delete(deletes)
            except BaseException:
                self.store.add(deletes, np.split(np.asarray(tokens, dtype=np.float32), offsets[1:-1]))
                raise

    def build(self, batches):
        """
        Builds the FDE index and the token store from the first write. Nothing is kept unless both are complete.

        Args:
            batches: Staged, or an iterable of (ids, fdes, matrices)
        """

        staged = batches if isinstance(batches, Staged) else self.stage(batches)
        codec, options = self.codec()

        if codec == staged.store.dtype and not options:
            # The stage already holds the tokens in the stored form: adopt its (spilled) store instead of copying it
            store = staged.store
        else:
            store = TokenStore(self.dim, codec, **options)
            self.train(store, staged)
            for ids, _, matrices in staged:
                store.add(ids, matrices)

        ann = {key: value for key, value in self.config.get("ann", {}).items() if key != "type"}
        fdes = FDEIndex(self.dimensions, **ann)
        if len(staged):
            fdes.index(staged.ids, staged.vectors())

        self.fdes, self.store = fdes, store
        self.config["ann"] = fdes.config

    def train(self, store, staged):
        """
        Trains a store's codec on a sample of staged tokens, when the codec needs training and has not been trained. An index
        built empty trains on its first documents; after that the codec is kept (see the README).

        Args:
            store: TokenStore
            staged: Staged
        """

        if not getattr(store, "trained", True) and staged.store.tokens:
            store.train(staged.sample(getattr(store, "samples", SAMPLE)))

    def stage(self, batches):
        """
        Collects an iterable of batches into a Staged.

        Args:
            batches: iterable of (ids, fdes, matrices)

        Returns:
            Staged
        """

        staged = Staged(self.dim, "float32")
        for ids, fdes, matrices in batches:
            staged.add(ids, fdes, matrices)

        return staged

    def codec(self):
        """
        Token codec name and options from the config.

        Returns:
            (name, options dict)
        """

        name = self.config.get("tokens", "float16")
        options = self.config.get(name) if isinstance(self.config.get(name), dict) else {}
        return name, dict(options)

    def search(self, queries, limit, options):
        if self.fdes is None:
            return np.zeros((len(queries), 0), dtype=np.float32), np.zeros((len(queries), 0), dtype=np.int64)

        return self.fdes.search(queries, limit, options.efsearch, options.nprobe)

    def gather(self, ids, decode=True):
        return self.store.gather(ids, decode)

    def count(self):
        return self.fdes.count() if self.fdes is not None else 0

    def ids(self):
        return self.store.ids if self.store is not None else np.zeros(0, dtype=np.int64)

    def nbytes(self):
        """
        Returns:
            bytes held by the token store
        """

        return self.store.nbytes if self.store is not None else 0

    def save(self, path):
        self.fdes.save(os.path.join(path, "fdes"))
        self.store.save(os.path.join(path, "tokens"))

    def load(self, path):
        self.fdes = FDEIndex.load(os.path.join(path, "fdes"))
        self.store = TokenStore.load(os.path.join(path, "tokens"), mmap=True)
        self.config["ann"] = self.fdes.config

        if self.fdes.count() != len(self.store):
            raise ValueError(f"Index at {path} is inconsistent: FDE index has {self.fdes.count()} documents, token store has {len(self.store)}")

    def close(self):
        self.fdes, self.store = None, None
