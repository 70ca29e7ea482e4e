"""
Durable module: crash-safe save and load of whole txtai Embeddings indexes
"""

import os

from txtai import Embeddings

# LockTimeoutError: what save and load raise when a lock is not free in time, importable from here
from ..core.files import LockTimeoutError, locked, locktimeout, reading, remove, replacedir, restore, sync, syncdir, tempdir  # noqa: F401

# Archive suffixes txtai's Embeddings.save writes as one compressed file
ARCHIVES = (".tar.gz", ".tar.bz2", ".tar.xz", ".zip")


def save(embeddings, path, timeout=None):
    """
    Saves an Embeddings index so that a crash at any point leaves either the previous save or the new one loadable at path,
    and so that no reader (`load`, in any process) ever sees a half-swapped save or removes a save in progress.

    txtai's own `Embeddings.save` writes config.json and the document database in place: a process killed mid-save can leave
    a new config.json next to an old database, or a half-written one. This helper runs `Embeddings.save` into a new sibling
    directory `.<name>.saving-<id>` (an archive: a file inside it), which it holds locked (flock) while it is live, flushes it
    to disk, then swaps it in under the index's exclusive lock (`.<name>.lock` beside it): a directory in two renames (old
    aside, new in), an archive in one. A crash between the renames leaves the previous save in a `.<name>.old-<id>` sibling,
    which `load` moves back. The document database of the instance is then re-opened at path, so later saves and upserts
    never write to the files of a replaced save.

    Saves from several processes to one path each complete whole (the last swap wins); loads wait for a swap in progress.
    Keep one writing process per path: a process that loaded path and writes without saving writes into replaced files.

    The swap waits at most `timeout` seconds for the lock (default: the TXTAI_MUVERA_LOCK_TIMEOUT environment variable, else
    60), then raises LockTimeoutError naming the lock file and its holder; the save is then removed and path left as it was.

    Args:
        embeddings: txtai Embeddings instance (any index, not only txtai-muvera ones)
        path: output directory, or archive file ending with .tar.gz, .tar.bz2, .tar.xz or .zip
        timeout: seconds to wait for the index's lock
    """

    # A bad timeout fails before anything is written
    path, timeout = os.path.abspath(str(path)), locktimeout(timeout)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)

    archive = next((suffix for suffix in ARCHIVES if name.endswith(suffix)), None)

    # The save is written outside any lock: only the swap excludes readers
    temp = tempdir(path)
    try:
        target = os.path.join(temp, name) if archive else temp
        embeddings.save(target)

        with locked(path, timeout=timeout):
            # Leftovers of dead saves first: the previous save must be in place before it is replaced
            restore(path, exclusive=True)

            if archive:
                # One file: flushed, then a rename replaces it atomically
                sync(target)
                os.replace(target, path)
                syncdir(parent)
            else:
                replacedir(temp, path)

            if not archive:
                repoint(embeddings, path)
    finally:
        # Nothing is left after a swap; a failed save is removed whole
        remove(temp)


def load(path, embeddings=None, timeout=None, **kwargs):
    """
    Loads an index saved with `save` (or with txtai's own save), recovering first from a save interrupted between its renames.
    The load holds the index's shared lock: a concurrent `save` swaps only before or after it, never during it. Each lock is
    waited for at most `timeout` seconds (see `save`), then LockTimeoutError is raised.

    In a folder this process cannot write to (read-only mount or permissions) the index is loaded as it is, without the lock
    when there is no lock file, and without repairing: where a dead save left the index folder moved aside, the previous
    save is loaded from where it lies (`.<name>.old-<id>`).

    Args:
        path: index directory or archive file
        embeddings: Embeddings instance to load into, a new one by default
        timeout: seconds to wait for each of the index's locks
        kwargs: further arguments for Embeddings.load

    Returns:
        Embeddings
    """

    path = os.path.abspath(str(path))
    embeddings = embeddings if embeddings is not None else Embeddings()

    with reading(path, timeout) as folder:
        embeddings.load(folder, **kwargs)

    return embeddings


def repoint(embeddings, path):
    """
    Re-opens the document database of an instance at its new home. txtai keeps an embedded database (SQLite, DuckDB) open at
    the file it was loaded from or first saved to: after the swap that file is in a removed directory.

    Args:
        embeddings: Embeddings instance just saved to path
        path: save directory
    """

    if embeddings.indexes:
        # Subindexes hold databases of their own: re-open everything
        embeddings.load(path)
        return

    database = embeddings.database
    if database is not None and isinstance(getattr(database, "path", None), str):
        database.close()
        database.load(os.path.join(path, "documents"))
