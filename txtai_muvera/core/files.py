"""
Files module: atomic directory saves and checked JSON headers, shared by every part that is saved
"""

import json
import os
import zlib
import shutil
import uuid


def tempdir(path, kind="saving"):
    """
    Creates a new hidden sibling directory of path, where a save is written before it is swapped in.

    Args:
        path: target path
        kind: name tag

    Returns:
        new directory path
    """

    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temp = os.path.join(parent, f".{name}.{kind}-{uuid.uuid4().hex}")
    os.mkdir(temp)
    return temp


def replacedir(temp, path):
    """
    Flushes the complete directory temp to disk and moves it into place at path. An existing path is renamed aside first and
    removed last: its files are never written to, so whoever has them open or memory-mapped keeps reading them (POSIX). A crash between the two
    renames leaves the previous save in a `.<name>.old-<id>` sibling, which `restore` moves back.

    Args:
        temp: complete new directory
        path: target directory
    """

    # Everything in the new save reaches the disk before any rename makes it the save at path
    sync(temp)

    path = os.path.abspath(path)
    if os.path.exists(path):
        parent, name = os.path.split(path)
        old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex}")
        os.rename(path, old)
        os.rename(temp, path)
        remove(old)
    else:
        os.rename(temp, path)

    syncdir(os.path.dirname(path))


def restore(path):
    """
    Repairs what an interrupted save can leave next to path: moves the previous save back into place when the process died
    between the two renames of `replacedir`, and removes unfinished and replaced saves.

    Args:
        path: saved directory or file

    Returns:
        True if a previous save was moved back into place
    """

    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return False

    siblings = os.listdir(parent)
    olds = sorted(os.path.join(parent, x) for x in siblings if x.startswith(f".{name}.old-"))
    temps = [os.path.join(parent, x) for x in siblings if x.startswith(f".{name}.saving-")]

    restored = False
    if not os.path.exists(path) and olds:
        # At most one backup exists at a time: saves restore before they rename anything
        os.rename(olds.pop(), path)
        syncdir(parent)
        restored = True

    for leftover in olds + temps:
        remove(leftover)

    return restored


def writeheader(directory, header):
    """
    Writes a saved part's header.json into the directory being saved (`replacedir` flushes it to disk).

    Args:
        directory: save directory
        header: JSON-serialisable dict
    """

    with open(os.path.join(directory, "header.json"), "w", encoding="utf-8") as f:
        json.dump(header, f, indent=2)


def readjson(file, what):
    """
    Reads a JSON object, with errors that name the file.

    Args:
        file: JSON file
        what: what the file is, for error messages

    Returns:
        dict
    """

    if not os.path.isfile(file):
        raise FileNotFoundError(f"{what} not found: {file}")

    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"Corrupt {what} {file}: {error}") from error

    if not isinstance(data, dict):
        raise ValueError(f"Corrupt {what} {file}: expected a JSON object")

    return data


def readheader(file, what, form, version):
    """
    Reads a saved part's header and checks its format name and version before anything else of the part is trusted.

    Args:
        file: header.json path
        what: what the part is, for error messages
        form: expected format name
        version: supported format version

    Returns:
        header dict
    """

    header = readjson(file, f"{what} header")
    if header.get("format") != form:
        raise ValueError(f"Not a {what} header {file}: format {header.get('format')!r}, expected {form!r}")
    if header.get("version") != version:
        raise ValueError(f"{what} at {file} has version {header.get('version')!r}; this txtai-muvera reads version {version}")

    return header


def sync(path):
    """
    Flushes a file, or every file and directory under a directory, to disk.

    Args:
        path: file or directory
    """

    files = [path] if os.path.isfile(path) else [os.path.join(root, x) for root, _, names in os.walk(path) for x in names]
    for file in files:
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    if os.path.isdir(path):
        for root, _, _ in os.walk(path):
            syncdir(root)


def syncdir(path):
    """
    Flushes a directory's entries (renames, new files) to disk, where the platform allows it.

    Args:
        path: directory
    """

    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return

    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def remove(path):
    """
    Removes a file or directory if it exists.

    Args:
        path: file or directory
    """

    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def digest(path, chunk=1 << 22):
    """
    CRC-32 of a file's bytes, read in chunks (fast enough to check at load; catches bit flips, not tampering).

    Args:
        path: file
        chunk: bytes read at a time

    Returns:
        unsigned 32-bit checksum as int
    """

    value = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            value = zlib.crc32(block, value)

    return value & 0xFFFFFFFF
