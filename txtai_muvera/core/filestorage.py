"""
FileStorage module: the storage engine that keeps FDEs in a faiss index and token matrices in a token store, in files
"""

import os

import numpy as np

from . import codecs as codecmodule
from .ann import FDEIndex
from .staged import SAMPLE, Staged
from .storage import Storage
from .store import TokenStore


class FileStorage(Storage):
    """
    FDEs in an FDEIndex (faiss), token matrices in a TokenStore, both keyed by index ids and saved as two folders (`fdes/`,
    `tokens/`) of the index directory, the layout txtai-muvera 0.1.0 wrote.

    Settings read from the scoring config: `ann` (FDEIndex options), `tokens` (token codec name) and the codec's options in the
    sub-dict named after it (e.g. `residual: {nbits: 2}`).

    A codec that needs training learns from the first write with tokens. When that sample was too small (codecs.Codec.trusted),
    the write after which the index holds enough tokens trains a new codec on all of them and re-encodes the stored documents.
    """

    def __init__(self, config, dimensions, dim):
        super().__init__(config, dimensions, dim)
        self.fdes, self.store = None, None

    @classmethod
    def staging(cls, config, dim, current=None):
        # Tokens: the committed store's codec when it is trained for good (an upsert copies its codes as they are), a new one from
        # the config before the first commit; a codec still to be retrained (a tiny first write) waits for floats. FDEs: float16
        # when the FDE index quantizes them (its codes keep far less than float16's precision), float32 for exact float FDEs
        if current is not None and current.store is not None:
            codec = current.store.codec
            codec = codec if codec.trained and codec.trusted else None
        else:
            name, options = cls.codec(config)
            codec = codecmodule.create(name, dim, **options)

        codec = None if codec is None or codec.name in ("float16", "float32") else codec
        return codec, "float16" if (config.get("ann") or {}).get("quantize") else "float32"

    def apply(self, deletes, batches):
        if self.fdes is None:
            self.build(batches)
            return

        staged = batches if isinstance(batches, Staged) else self.stage(batches)
        deletes = np.asarray(deletes, dtype=np.int64).reshape(-1)
        deletes = deletes[np.isin(deletes, self.store.ids)] if len(deletes) else deletes

        # Every step is undone exactly on failure, nothing is re-encoded: token store adds and deletes only change its document
        # arrays (snapshot / restore), a codec trained by this write lives in a new store that replaces the current one at the
        # end, and the FDE index undoes its adds (FDEIndex.restore). Its last step is never undone: deletes on flat and IVF
        # indexes (removed vectors cannot be put back in place), adds on HNSW (new nodes change older nodes' links)
        tokens, fdes = self.store.snapshot(), self.fdes.snapshot()
        try:
            store = self.prepare(staged, deletes)
            if staged.store.codec is store.codec:
                store.extend(staged.store)
            else:
                for ids, _, matrices in staged:
                    store.add(ids, matrices)
            store.delete(deletes)

            hnsw = self.fdes.kind == "hnsw"
            if hnsw and len(deletes):
                self.fdes.delete(deletes)
            if len(staged):
                self.fdes.add(staged.ids, staged.vectors())
            if not hnsw and len(deletes):
                self.fdes.delete(deletes)
        except BaseException:
            self.store.restore(tokens)
            self.fdes.restore(fdes, staged.ids)
            raise

        self.store = store

    def build(self, batches):
        """
        Builds the FDE index and the token store from the first write. Nothing is kept unless both are complete.

        Args:
            batches: Staged, or an iterable of (ids, fdes, matrices)
        """

        staged = batches if isinstance(batches, Staged) else self.stage(batches)
        codec, options = self.codec(self.config)

        if (codec == staged.store.dtype and not options) or (staged.encoded and staged.codec.name == codec and staged.codec.trusted):
            # The stage already holds the tokens in the stored form (floats, or codes of this codec encoded as they arrived): adopt
            # its spilled store instead of copying it
            store = staged.store
        else:
            store = TokenStore(self.dim, codec, spill=staged.store.spill, **options)
            if not store.trained and staged.store.tokens:
                store.train(staged.sample(SAMPLE))
            for ids, _, matrices in staged:
                store.add(ids, matrices)

        ann = {key: value for key, value in self.config.get("ann", {}).items() if key != "type"}
        fdes = FDEIndex(self.dimensions, **ann)
        if len(staged):
            fdes.index(staged.ids, staged.vectors())

        self.fdes, self.store = fdes, store
        self.config["ann"] = fdes.config

    def prepare(self, staged, deletes):
        """
        The token store a write adds to. That is the current store, unless its codec needs training and this write brings the
        first tokens (an index built without any), or its codec learned from too few rows (codecs.Codec.trusted) and the index
        holds `codec.enough` tokens after this write: then a new codec learns from a sample of every token the index will hold
        (kept documents decoded from the store, few by definition, plus this write's) and a new store holds the kept documents
        re-encoded with it. The current store is never changed here.

        Args:
            staged: Staged write
            deletes: int64 ids this write deletes, all stored

        Returns:
            TokenStore
        """

        current = self.store.codec
        if (current.trained and current.trusted) or not staged.store.tokens:
            return self.store

        # Tokens the index holds after this write
        kept = self.store.ids
        kept = kept[~np.isin(kept, deletes)]
        stored = int(self.store.counts(kept).sum())
        total = stored + staged.store.tokens
        if current.trained and total < current.enough:
            return self.store

        # Rows drawn from the kept documents (decoded) and this write's in proportion to their tokens
        share = stored if total <= SAMPLE else round(SAMPLE * stored / total)
        sample = np.concatenate([self.store.sample(share, seed=0, ids=kept), staged.sample(min(SAMPLE, total) - share)])

        # A fresh codec from the configured options: a trained one has resolved them for its sample (e.g. residual centroids)
        name, options = self.codec(self.config)
        codec = codecmodule.create(current.name, self.dim, **(options if name == current.name else {}))
        codec.train(sample)
        return TokenStore.transcode(self.store, codec)

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

    @staticmethod
    def codec(config):
        """
        Token codec name and options from a scoring config.

        Args:
            config: scoring config

        Returns:
            (name, options dict)
        """

        name = config.get("tokens", "float16")
        options = config.get(name) if isinstance(config.get(name), dict) else {}
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
