"""
Files module: atomic directory saves and checked JSON headers, shared by every part that is saved
"""

import contextlib
import datetime
import errno
import json
import logging
import mmap
import os
import socket
import zlib
import shutil
import threading
import time
import uuid

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no advisory locks: saves and loads then take none
    fcntl = None

logger = logging.getLogger(__name__)

# Seconds a lock of a saved index is waited for: the `timeout` argument, else this environment variable, else TIMEOUT. Long
# enough for a large save to swap in, short enough that a stopped or hung holder shows up as an error instead of a hang
TIMEOUT = 60.0
TIMEOUTVAR = "TXTAI_MUVERA_LOCK_TIMEOUT"

# What opening a file for writing raises in a folder this process cannot write to
READONLY = (errno.EROFS, errno.EACCES, errno.EPERM)

# Save folders this process is writing: path -> descriptor holding an exclusive flock on the folder for as long as it is live
LIVE = {}
LIVELOCK = threading.Lock()


def tempdir(path, kind="saving"):
    """
    Creates a new hidden sibling directory of path, where a save is written before it is swapped in. The directory is locked
    (flock) by this process until `replacedir` or `remove` is done with it, so `restore` in any process tells a live save from
    the leftover of a dead one and never removes a save in progress.

    Args:
        path: target path
        kind: name tag

    Returns:
        new directory path
    """

    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)

    # Created under a pending name, locked, then renamed. A process killed before the rename leaves an unlocked pending folder,
    # which restore removes while holding its lock; if restore got there first (between mkdir and rename), start again
    for _ in range(100):
        unique = uuid.uuid4().hex
        pending = os.path.join(parent, f".{name}.pending-{unique}")
        temp = os.path.join(parent, f".{name}.{kind}-{unique}")
        os.mkdir(pending)
        descriptor = None
        try:
            descriptor = hold(pending)
            os.rename(pending, temp)
        except FileNotFoundError:
            if descriptor is not None:
                os.close(descriptor)
            continue

        with LIVELOCK:
            LIVE[temp] = descriptor
        return temp

    raise OSError(f"Could not create a save folder next to {path}: it kept being removed")


class LockTimeoutError(TimeoutError):
    """
    The lock of a saved index was not free within the timeout: another process holds it (stopped, hung or very slow).
    """


def hold(directory):
    """
    Takes an exclusive flock on a directory, the mark of a live save.

    Args:
        directory: directory

    Returns:
        open descriptor holding the lock (None where the platform has no flock)
    """

    if not fcntl:
        return None

    descriptor = os.open(directory, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def release(temp):
    """
    Releases the lock `tempdir` holds on a save directory.

    Args:
        temp: directory returned by tempdir
    """

    with LIVELOCK:
        descriptor = LIVE.pop(os.path.abspath(temp), None)
    if descriptor is not None:
        os.close(descriptor)


def live(directory):
    """
    Checks if a save directory is being written by a live process (its flock is held).

    Args:
        directory: save directory

    Returns:
        True if a live save holds it
    """

    if os.path.abspath(directory) in LIVE:
        return True
    if not fcntl:
        return False

    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return False

    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(descriptor)


def removeunlocked(directory):
    """
    Removes a pending save folder unless a live process holds its lock, holding the lock while removing it.

    Args:
        directory: pending save folder
    """

    if not fcntl or os.path.abspath(directory) in LIVE:
        return

    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return

    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return

    try:
        remove(directory)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def locked(path, shared=False, timeout=None):
    """
    Holds the advisory lock of a saved index: `.<name>.lock` beside it. Swaps take it exclusive, loads shared, so no load reads
    a mix of two saves and no swap happens under a load. The lock file is never removed (removing it would let two processes
    lock two different files); an exclusive holder writes its pid, host and start time into it, for the error of whoever
    waits too long.

    Args:
        path: saved directory or file
        shared: shared (readers) or exclusive (writers)
        timeout: seconds to wait for the lock, see `locktimeout`

    Raises:
        LockTimeoutError when the lock is not free within the timeout
    """

    timeout = locktimeout(timeout)
    parent, name = os.path.split(os.path.abspath(path))
    if not fcntl or (shared and not os.path.isdir(parent)):
        # Nothing to read from a folder that does not exist: no lock, and no folder created by a reader
        yield
        return

    lockfile = os.path.join(parent, f".{name}.lock")
    descriptor = openlock(lockfile, shared)
    if descriptor is None:
        # A read-only folder without a lock file: nothing can swap a save there, so readers go without the lock
        yield
        return

    try:
        acquire(descriptor, lockfile, shared, timeout)
    except BaseException:
        os.close(descriptor)
        raise

    try:
        if not shared:
            note(descriptor, {"pid": os.getpid(), "host": socket.gethostname(), "since": now()})
        yield
    finally:
        if not shared:
            note(descriptor, None)
        os.close(descriptor)


def locktimeout(timeout=None):
    """
    Resolves how long a lock is waited for: timeout if given, else the TXTAI_MUVERA_LOCK_TIMEOUT environment variable, else
    60 seconds. `inf` waits for ever.

    Args:
        timeout: seconds or None

    Returns:
        seconds as float
    """

    source = "timeout"
    if timeout is None:
        timeout, source = os.environ.get(TIMEOUTVAR, "").strip() or TIMEOUT, TIMEOUTVAR

    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = -1.0

    # NaN fails both comparisons
    if not seconds >= 0:
        raise ValueError(f"Invalid lock {source} {timeout!r}: expected seconds as a number >= 0 (inf waits for ever)")

    return seconds


def openlock(lockfile, shared):
    """
    Opens (creates) a lock file. A reader in a folder it cannot write to opens an existing lock file read-only, which still
    takes a shared lock: a writer with another, writable view of the folder (a read-only mount of it) is still excluded.

    Args:
        lockfile: lock file path
        shared: open for a shared lock

    Returns:
        descriptor, or None for a reader in a read-only folder without a lock file
    """

    if not shared:
        os.makedirs(os.path.dirname(lockfile), exist_ok=True)
        return os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o644)

    try:
        return os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        pass

    try:
        return os.open(lockfile, os.O_RDONLY)
    except OSError:
        return None


def acquire(descriptor, lockfile, shared, timeout):
    """
    Takes a flock, waiting at most timeout seconds. flock has no timeout of its own: the lock is tried without blocking and
    tried again after short sleeps (at most 10 ms, so a waiting writer gets in between two loads in a loop).

    Args:
        descriptor: open lock file
        lockfile: lock file path, for the error
        shared: shared or exclusive
        timeout: seconds

    Raises:
        LockTimeoutError naming the lock file, the wait and the holder where it can be known
    """

    start, pause = time.monotonic(), 0.0005
    while True:
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass

        waited = time.monotonic() - start
        if waited >= timeout:
            kind = "shared" if shared else "exclusive"
            raise LockTimeoutError(
                f"Gave up after waiting {waited:.1f} s for the {kind} lock {lockfile}: {holders(descriptor)}. A save or load holds it "
                f"at most while it swaps or reads the index; raise the wait with timeout= or {TIMEOUTVAR} (seconds, inf waits for ever)"
            )

        pause = min(pause * 2, 0.01, timeout - waited)
        time.sleep(pause)


def holders(descriptor):
    """
    Says who holds a lock, as far as it can be known: the processes that /proc/locks lists for the lock file (Linux, local
    file systems) and the note an exclusive holder writes into it (pid and host, which also reaches other hosts on a shared
    file system).

    Args:
        descriptor: open lock file

    Returns:
        text for an error message
    """

    stat, found = os.fstat(descriptor), {}
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    with contextlib.suppress(OSError, ValueError), open("/proc/locks", encoding="utf-8") as handle:
        for fields in (line.split() for line in handle):
            # Lines with "->" are processes waiting for a lock, not holding it
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                found[int(fields[4])] = "exclusive" if fields[3] == "WRITE" else "shared"

    try:
        holder = json.loads(os.pread(descriptor, 4096, 0) or b"null")
    except (OSError, ValueError):
        holder = None

    described = []
    if isinstance(holder, dict):
        pid, local = holder.get("pid"), holder.get("host") == socket.gethostname()
        # A note from this host whose pid /proc/locks does not list is stale (its writer died holding the lock)
        if not found or pid in found or not local:
            found.pop(pid, None)
            described.append(f"pid {pid} on host {holder.get('host')}{state(pid) if local else ''} took it exclusively at {holder.get('since')}")

    described.extend(f"pid {pid} holds it {mode}{state(pid)}" for pid, mode in sorted(found.items()))
    return "; ".join(described) if described else "its holder is unknown (a reader, or a process on another host)"


def state(pid):
    """
    Tells a stopped or zombie process from a running one, where /proc says.

    Args:
        pid: process id

    Returns:
        " (stopped)", " (zombie)" or ""
    """

    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            code = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""

    return {"T": " (stopped)", "t": " (stopped)", "Z": " (zombie)"}.get(code, "")


def note(descriptor, holder):
    """
    Writes who holds an exclusive lock into the lock file (or empties it). Best effort: the note only serves error messages.

    Args:
        descriptor: lock file, held exclusively
        holder: dict, or None to empty the file
    """

    try:
        os.ftruncate(descriptor, 0)
        if holder:
            os.pwrite(descriptor, json.dumps(holder).encode("utf-8"), 0)
    except OSError:
        pass


def now():
    """
    Returns:
        current UTC time, ISO 8601 to the second
    """

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def replacedir(temp, path):
    """
    Flushes the complete directory temp to disk and moves it into place at path. An existing path is renamed aside first and
    removed last: its files are never written to, so whoever has them open or memory-mapped keeps reading them (POSIX). A crash between the two
    renames leaves the previous save in a `.<name>.old-<id>` sibling, which `restore` moves back. The lock `tempdir` took is
    held until the swap is complete.

    Args:
        temp: complete new directory
        path: target directory
    """

    # Everything in the new save reaches the disk before any rename makes it the save at path
    sync(temp)

    path = os.path.abspath(path)
    try:
        if os.path.exists(path):
            parent, name = os.path.split(path)
            old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex}")
            os.rename(path, old)
            os.rename(temp, path)
            remove(old)
        else:
            os.rename(temp, path)

        syncdir(os.path.dirname(path))
    finally:
        release(temp)


def restore(path, exclusive=False):
    """
    Repairs what an interrupted save can leave next to path: moves the previous save back into place when the process died
    between the two renames of `replacedir`, and removes unfinished and replaced saves of dead processes. Save folders that a
    live process holds (see `tempdir`) are left alone, and while one exists nothing is moved: that process may be between
    its two renames.

    Args:
        path: saved directory or file
        exclusive: the caller holds the exclusive `locked(path)`, so no swap is in progress and a backup is from a dead save

    Returns:
        True if a previous save was moved back into place
    """

    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return False

    siblings = os.listdir(parent)
    olds = sorted(os.path.join(parent, x) for x in siblings if x.startswith(f".{name}.old-"))
    temps = [os.path.join(parent, x) for x in siblings if x.startswith(f".{name}.saving-")]

    # Pending folders of processes killed before they renamed them go, under their own lock (see tempdir)
    for pending in (os.path.join(parent, x) for x in siblings if x.startswith(f".{name}.pending-")):
        removeunlocked(pending)

    # Leftovers of dead saves (unlocked) go; live saves are never touched
    alive = [x for x in temps if live(x)]
    for leftover in temps:
        if leftover not in alive:
            remove(leftover)

    # Another process's save in progress may be between its two renames: it puts path back itself
    with LIVELOCK:
        if not exclusive and any(x not in LIVE for x in alive):
            return False

    restored = False
    if not os.path.exists(path) and olds:
        # At most one backup exists at a time: saves restore before they rename anything
        try:
            os.rename(olds.pop(), path)
            syncdir(parent)
            restored = True
        except OSError:
            # Another process restored it first
            pass

    for leftover in olds:
        remove(leftover)

    return restored


@contextlib.contextmanager
def reading(path, timeout=None):
    """
    Repairs an interrupted save at path (under the exclusive lock), then holds the index's shared lock, so that whatever reads
    path inside sees one complete save: no swap happens until it is done.

    A folder this process cannot write to (read-only file system or permissions) is read as it is: nothing is repaired, since
    nothing can be moved there, and dead saves' leftovers are left alone. Where a dead save moved the index folder aside and
    never back (only `.<name>.old-<id>` exists), that previous save is read where it lies, with a warning.

    Args:
        path: saved directory or file
        timeout: seconds to wait for each lock, see `locktimeout`

    Returns:
        path to read: absolute path, or the previous save beside it in a read-only folder
    """

    path, timeout = os.path.abspath(str(path)), locktimeout(timeout)
    parent = os.path.dirname(path)

    # A saver killed between its renames can strike between the repair and the shared lock: check again under the lock
    for _ in range(10):
        repairable = True
        if leftovers(path):
            try:
                with locked(path, timeout=timeout):
                    restore(path, exclusive=True)
            except OSError as error:
                if isinstance(error, LockTimeoutError) or error.errno not in READONLY:
                    raise
                repairable = False

        with locked(path, shared=True, timeout=timeout):
            if os.path.exists(path) or not leftovers(path):
                yield path
                return

            if not repairable or not os.access(parent, os.W_OK):
                yield previous(path)
                return

    yield path


def previous(path):
    """
    Finds the previous save that a save killed between the two renames of `replacedir` left aside, for a reader that cannot
    move it back. It is the one `restore` would move back.

    Args:
        path: missing saved directory or file

    Returns:
        the previous save's path, or path when there is none
    """

    parent, name = os.path.split(path)
    olds = sorted(os.path.join(parent, x) for x in os.listdir(parent) if x.startswith(f".{name}.old-"))
    if not olds:
        return path

    logger.warning("%s is missing and its folder is read-only: reading the previous save %s (a writable load moves it back)", path, olds[-1])
    return olds[-1]


def leftovers(path):
    """
    Checks if an interrupted save left anything next to path for `restore` to repair.

    Args:
        path: saved directory or file

    Returns:
        True if there is something to restore or remove
    """

    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return False

    return any(x.startswith((f".{name}.old-", f".{name}.saving-", f".{name}.pending-")) for x in os.listdir(parent))


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
    Removes a file or directory if it exists (and releases its save lock, for a directory from `tempdir`).

    Args:
        path: file or directory
    """

    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)

    release(path)


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


def evict(array):
    """
    Drops the pages of a memory-mapped array (np.memmap or a view of one) from this process's resident memory. A pass that
    streams through a large mapped file (a write's spool, a spilled token store) would otherwise keep every page it read or
    wrote mapped until the map is closed; the pages stay in the page cache, so reading them again costs a minor fault.

    Args:
        array: any array; arrays that are not memory-mapped, or mapped copy-on-write (whose changes live only in those pages),
               are left alone
    """

    handle = getattr(array, "_mmap", None)
    shared = getattr(array, "mode", None) in ("r", "readonly", "r+", "readwrite", "w+", "write")
    if handle is not None and shared and hasattr(mmap, "MADV_DONTNEED") and not handle.closed:
        handle.madvise(mmap.MADV_DONTNEED)
