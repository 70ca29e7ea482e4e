"""
Durable module: crash-safe save and load of whole txtai Embeddings indexes
"""

import os
import uuid

from txtai import Embeddings

from ..core.files import remove, replacedir, restore, sync, syncdir

# Archive suffixes txtai's Embeddings.save writes as one compressed file
ARCHIVES = (".tar.gz", ".tar.bz2", ".tar.xz", ".zip")


def save(embeddings, path):
    """
    Saves an Embeddings index so that a crash at any point leaves either the previous save or the new one loadable at path.

    txtai's own `Embeddings.save` writes config.json and the document database in place: a process killed mid-save can leave
    a new config.json next to an old database, or a half-written one. This helper runs `Embeddings.save` into a new sibling
    directory (or archive file), flushes it to disk, then swaps it in with renames. A directory is swapped in two renames (old
    aside, new in); a crash between them leaves the previous save in a `.<name>.old-<id>` sibling, which `load` (and `files.restore`)
    move back. The document database of the instance is then re-opened at path, so later saves and upserts never write to
    the files of a replaced save.

    Saving to one path from two processes at once is not supported (nor is it with txtai's own save).

    Args:
        embeddings: txtai Embeddings instance (any index, not only txtai-muvera ones)
        path: output directory, or archive file ending with .tar.gz, .tar.bz2, .tar.xz or .zip
    """

    path = os.path.abspath(str(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)

    # Leftovers of earlier interrupted saves first: the previous save must be in place before it is replaced
    restore(path)

    archive = next((suffix for suffix in ARCHIVES if name.endswith(suffix)), None)
    temp = os.path.join(parent, f".{name}.saving-{uuid.uuid4().hex}{archive or ''}")
    try:
        embeddings.save(temp)

        if archive:
            # One file: flushed, then a rename replaces it atomically
            sync(temp)
            os.replace(temp, path)
            syncdir(parent)
        else:
            replacedir(temp, path)
    except BaseException:
        remove(temp)
        raise

    if not archive:
        repoint(embeddings, path)


def load(path, embeddings=None, **kwargs):
    """
    Loads an index saved with `save` (or with txtai's own save), recovering first from a save interrupted between its renames.

    Args:
        path: index directory or archive file
        embeddings: Embeddings instance to load into, a new one by default
        kwargs: further arguments for Embeddings.load

    Returns:
        Embeddings
    """

    path = os.path.abspath(str(path))
    restore(path)

    embeddings = embeddings if embeddings is not None else Embeddings()
    embeddings.load(path, **kwargs)
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
