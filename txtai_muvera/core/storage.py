"""
Storage module: the interface every storage engine of a late-interaction index implements, and the table that names them
"""

import importlib

# Engines by config name ("backend" in the scoring config): adding one is a new module plus a line here
ENGINES = {"faiss": "txtai_muvera.core.filestorage.FileStorage", "pgvector": "txtai_muvera.core.pgvector.PGVectorStorage"}


class Storage:
    """
    Holds each document's MUVERA FDE and its token matrix, keyed by int64 index ids. Writes are all or nothing: `apply` either
    makes every change of one write visible or, on any error, leaves the storage exactly as it was and raises.

    Engines never import txtai. The scoring class (glue) encodes text, assigns ids and re-ranks; an engine stores and finds.
    """

    # True when the data lives in the saved folder; False for a database engine, whose table is the source of truth and may
    # hold writes committed after the folder was saved
    files = True

    def __init__(self, config, dimensions, dim):
        """
        Creates an engine.

        Args:
            config: engine settings (the scoring config's sub-dict named after the engine, plus shared keys); resolved values
                    are written back so the saved config says how the index was built
            dimensions: FDE dimensions
            dim: token dimension
        """

        self.config, self.dimensions, self.dim = config, dimensions, dim

    def apply(self, deletes, batches):
        """
        Applies one write: removes the `deletes` ids, then adds every batch. All or nothing.

        Args:
            deletes: int64 array of ids to remove (ids that are not stored are ignored)
            batches: iterable (read once) of (ids int64 (n,), fdes float32 (n, dimensions), matrices list of float32 (t, dim))
        """

        raise NotImplementedError

    @classmethod
    def staging(cls, config, dim, current=None):
        """
        How a write's documents wait for their commit when this engine will store them: the token codec to encode them with as
        they arrive (core/staged.py), so that a large write is never held as floats, and the precision of its spooled FDEs.
        Engines that re-encode tokens themselves stage floats.

        Args:
            config: scoring config
            dim: token dimension
            current: the committed engine the write may go to, None before the first commit

        Returns:
            (codecs.Codec or None, FDE spool dtype name)
        """

        return None, "float32"

    def search(self, queries, limit, options):
        """
        Finds FDE candidates.

        Args:
            queries: float32 (q, dimensions) query FDEs
            limit: candidates per query
            options: SearchOptions (per-call knobs, e.g. efsearch, nprobe)

        Returns:
            (scores float32 (q, limit), ids int64 (q, limit)), -1 ids pad missing results
        """

        raise NotImplementedError

    def gather(self, ids, decode=True):
        """
        Token matrices of stored ids in flat form, for maxsim_flat (see TokenStore.gather).

        Args:
            ids: int64 ids, all stored
            decode: decode codes that are not scored as stored; False returns them as a codecs.Codes block, which maxsim_flat
                    scores without decoding every row first

        Returns:
            (tokens (T, dim) array or Codes, offsets (len(ids) + 1,) int64, scale (T,) float32 or None)
        """

        raise NotImplementedError

    def count(self):
        """
        Returns:
            number of stored documents
        """

        raise NotImplementedError

    def ids(self):
        """
        Returns:
            int64 array of stored ids
        """

        raise NotImplementedError

    def save(self, path):
        """
        Saves whatever this engine keeps in files to the directory path (a database engine writes only its settings).

        Args:
            path: directory
        """

        raise NotImplementedError

    def load(self, path):
        """
        Loads a saved engine (a database engine reconnects).

        Args:
            path: directory
        """

        raise NotImplementedError

    def close(self):
        """
        Releases files and connections.
        """


def engine(name):
    """
    The storage engine class of a config name.

    Args:
        name: engine name, a key of ENGINES

    Returns:
        Storage subclass
    """

    if name not in ENGINES:
        raise ValueError(f"Unknown backend {name!r}, accepted: {', '.join(ENGINES)}")

    module, cls = ENGINES[name].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


def create(name, config, dimensions, dim):
    """
    Creates a storage engine by config name.

    Args:
        name: engine name, a key of ENGINES
        config: engine settings
        dimensions: FDE dimensions
        dim: token dimension

    Returns:
        Storage
    """

    return engine(name)(config, dimensions, dim)
