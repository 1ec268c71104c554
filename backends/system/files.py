"""Files that hold volumes and their records: allocation, truncation, fsync, atomic replacement, removal.

Every function blocks (the callers run them in a worker thread). A full filesystem is one domain error,
:class:`~backends.errors.CapacityExhausted`, raised in one place (:func:`no_room`), whatever call hit it:
``posix_fallocate``, a short ``write`` of a record, a ``rename`` into a directory that must grow.

What the file layer guarantees, and what callers build on:

* :func:`create_image` makes a new file of ``size`` bytes, every block allocated (``allocate=True``) or
  sparse, and removes it again when that fails: a caller never finds half an image it did not make.
* :func:`grow_image` grows an existing file (and allocates every block of it when asked); on ENOSPC the
  file gets its old size back.
* :func:`replace_atomically` writes a temporary file in the same directory, fsyncs it and renames it over
  the target, so a crash leaves the old content or the new one, never half of either.
* :func:`remove` unlinks files that may already be gone and makes that durable with one fsync of the
  directory; removing and renaming need no free space, so they work on a full filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping

from backends.errors import CapacityExhausted

#: Prefix of every temporary file this module makes; a crash may leave them behind (see :func:`remove_leftovers`).
TEMPORARY_PREFIX = ".tmp-"
#: errno values that mean "the filesystem (or the quota) has no room".
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: posix_fallocate on a filesystem that cannot preallocate: the file is made sparse instead.
_NO_PREALLOCATION = (errno.EOPNOTSUPP, errno.EINVAL)


@contextlib.contextmanager
def no_room(what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT inside the block into :class:`CapacityExhausted` ("no room <what>: <reason>")."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise CapacityExhausted(f"no room {what}: {exc.strerror}") from exc
        raise


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in _NO_PREALLOCATION:
            raise


def create_image(path: str, size: int, *, allocate: bool) -> None:
    """Create ``path`` (it must not exist) with ``size`` bytes, allocated or sparse; not fsynced (the caller
    decides when). On any failure the file is gone again."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        with no_room(f"for {size} bytes in {os.path.dirname(path)}"):
            os.ftruncate(fd, size)
            if allocate:
                _allocate(fd, size)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


def grow_image(path: str, size: int, *, allocate: bool) -> None:
    """Grow ``path`` to at least ``size`` bytes, allocating every block of it when ``allocate``; fsynced.

    A file already that large keeps its size (``allocate`` still fills its holes). On ENOSPC the file is cut
    back to its old size (what the failed call allocated beyond it is freed) before CapacityExhausted."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        old = os.fstat(fd).st_size
        try:
            with no_room(f"to grow {os.path.basename(path)} to {size} bytes"):
                if old < size:
                    os.ftruncate(fd, size)
                if allocate:
                    _allocate(fd, max(old, size))
                os.fsync(fd)
        except CapacityExhausted:
            if old < size:
                os.ftruncate(fd, old)
            raise
    finally:
        os.close(fd)


def fsync_path(path: str, flags: int = 0) -> None:
    """fsync the file (or, with ``os.O_DIRECTORY``, the directory) at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str) -> None:
    fsync_path(directory, os.O_DIRECTORY)


def replace_atomically(path: str, data: bytes, *, sync_directory: bool = True) -> None:
    """Replace ``path`` with ``data``: temporary file beside it, fsync, rename, fsync of the directory.

    ``sync_directory=False`` leaves the rename's durability to the caller, which must fsync the directory
    itself before it reports success (one directory fsync then covers several renames).
    """
    directory = os.path.dirname(path) or "."
    with no_room(f"to write {path}"):
        fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=os.path.splitext(path)[1], dir=directory)
        try:
            try:
                view = memoryview(data)
                while view:  # a write to a nearly full filesystem may be short; never rename half a file
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    if sync_directory:
        fsync_directory(directory)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def rename_if_present(source: str, target: str) -> bool:
    """Rename ``source`` to ``target`` (replacing it); False when ``source`` does not exist. Needs no room."""
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return False
    return True


def remove(paths: Iterable[str], *, sync: str = "") -> None:
    """Unlink each of ``paths`` that still exists, then (``sync``: that directory) make it durable."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if sync:
        fsync_directory(sync)


def remove_leftovers(directory: str, pattern: str) -> list[str]:
    """Remove what a crash left in ``directory`` matching ``pattern`` (a glob); returns their names."""
    found = sorted(glob.glob(os.path.join(glob.escape(directory), pattern)))
    remove(found)
    return [os.path.basename(p) for p in found]


def ensure_directory(directory: str) -> None:
    """``directory`` (and its parents) exist, made private (0700) when this call creates them."""
    os.makedirs(directory, mode=0o700, exist_ok=True)


def check_writable(directory: str) -> bool:
    """Whether a file can be created and removed in ``directory`` (``.probe``): False when its filesystem is
    full (deletions still work there, and must: they give the space back); OSError for anything else."""
    probe = os.path.join(directory, ".probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        if exc.errno in _FULL:
            return False
        raise
    os.unlink(probe)
    return True


def file_names(directory: str) -> set[str]:
    """Names of the regular files directly in ``directory`` (symlinks and directories left out)."""
    with os.scandir(directory) as entries:
        return {e.name for e in entries if e.is_file(follow_symlinks=False)}


def exists(path: str) -> bool:
    """Whether something (a file, a dangling link) has that name."""
    return os.path.lexists(path)


def holds_no_data(path: str) -> bool:
    """True when the file at ``path`` has no data extent anywhere (every byte reads as zero).

    Holes and unwritten (preallocated) extents read as zeros; data still in the page cache counts as data.
    A filesystem without ``SEEK_DATA`` support reports the whole file as data, and any error is False: only
    a definite "no data" counts.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    finally:
        os.close(fd)
    return False


def sizes(paths: Mapping[str, str]) -> dict[str, tuple[int, int] | None]:
    """For each key, (apparent size, allocated bytes) of its file; None for a file that does not exist."""
    out: dict[str, tuple[int, int] | None] = {}
    for key, path in paths.items():
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out[key] = None
        else:
            out[key] = (st.st_size, st.st_blocks * 512)
    return out


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged writer can still allocate on the filesystem holding ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def supports_direct_io(directory: str) -> bool:
    """Whether files in ``directory`` can be opened with ``O_DIRECT`` (ramfs, for one, refuses it). Probed with
    an unnamed file where the filesystem has ``O_TMPFILE`` (no room needed), a named one otherwise; a full
    filesystem that cannot be probed is given the benefit of the doubt."""
    flags = os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC
    probe = os.path.join(directory, ".probe-direct")
    try:
        try:
            os.close(os.open(directory, flags | os.O_TMPFILE, 0o600))
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
                raise
            os.close(os.open(probe, flags | os.O_CREAT, 0o600))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        if exc.errno in _FULL:
            return True
        raise
    finally:  # a refused O_DIRECT open may still have created the file
        remove([probe])
    return True
