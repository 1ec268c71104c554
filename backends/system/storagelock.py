"""Exclusive locks on a backend's storage, so that one driver instance at a time owns it.

A lock is a BSD ``flock(LOCK_EX | LOCK_NB)`` on something every instance that could reach the storage also
sees: the storage directory itself (loopfile images, rawdisk snapshots: a directory can be flocked, so no
lock file joins the volumes), or the device nodes of the storage (a volume group's PVs, rawdisk's disks).
``flock`` locks belong to the inode, so they hold across containers and mount namespaces as long as both
see the same inode: the same hostPath directory, the host's ``/dev`` (devtmpfs has one superblock however
often it is mounted). The kernel drops the lock when its last file descriptor closes, so a ``kill -9``
releases it at once: there is no stale lock to break. Taking it never waits: a held lock is
:class:`~backends.errors.StorageInUse` naming the holder.

The holder is named by PID. ``/proc/locks`` shows a lock's owner translated into the reader's PID namespace,
and hides owners the reader cannot see (another container's). A locked directory therefore also carries its
holder's PID (in the holder's own namespace) and host name in an extended attribute (``trusted.localcsi.
holder``, best effort), which is what a second instance in another container reports. A device node carries
nothing: there the holder is named when ``/proc/locks`` can see it, and otherwise described as a process in
another PID namespace.

Holding a device node open has one side effect worth knowing: systemd-udevd skips (postpones) its event
processing for a whole disk while another process holds ``LOCK_EX`` on it (systemd's "block device locking"
protocol), so udev symlinks for partitions the driver writes appear only once the driver lets go.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backends.errors import StorageInUse, Unavailable

PROC_LOCKS = Path("/proc/locks")
#: Where a locked directory names its holder ("<pid> <host>").
HOLDER_XATTR = "trusted.localcsi.holder"


@dataclass
class StorageLock:
    """Locks held on some storage; released by :meth:`release` (or by the process's death)."""

    what: str
    paths: tuple[str, ...] = ()
    _fds: dict[str, int] = field(default_factory=dict)

    def holds(self, path: str) -> bool:
        return path in self._fds

    def add(self, path: str, what: str) -> None:
        """Also lock the device node ``path`` (a disk that appeared later); StorageInUse when it is held."""
        if path not in self._fds:
            self._fds[path] = _lock_node(path, what)
            self.paths = (*self.paths, path)

    def drop(self, path: str) -> None:
        """Let go of one path (a disk that has gone)."""
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)
            self.paths = tuple(p for p in self.paths if p != path)

    def release(self) -> None:
        for path in list(self._fds):
            self.drop(path)


def lock_directory(directory: str, what: str) -> StorageLock:
    """Lock ``directory`` (which must exist) itself, and note our PID and host on it."""
    fd = _open_locked(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, what)
    with contextlib.suppress(OSError):  # no xattrs here, or no room for one: the lock is what counts
        os.setxattr(fd, HOLDER_XATTR, f"{os.getpid()} {socket.gethostname()}".encode())
    return StorageLock(what, (directory,), {directory: fd})


def lock_devices(paths: Iterable[str], what: str) -> StorageLock:
    """Lock each device node of ``paths`` (in a stable order); all or none: one held means none is kept."""
    lock = StorageLock(what)
    try:
        for path in sorted(set(paths)):
            lock.add(path, what)
    except BaseException:
        lock.release()
        raise
    return lock


def _lock_node(path: str, what: str) -> int:
    return _open_locked(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, what)


def _open_locked(path: str, flags: int, what: str) -> int:
    """Open ``path`` and take its lock without waiting; the open descriptor holds the lock."""
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise Unavailable(f"cannot open {path} to lock {what}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        st, recorded = os.fstat(fd), _recorded_holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise Unavailable(f"cannot lock {path} for {what}: {exc.strerror}") from exc
        raise StorageInUse(f"{what} is in use by {describe_holder(holder_pids(st.st_dev, st.st_ino), recorded)} "
                           f"(lock on {path}): another localcsi instance owns it; this one touches nothing "
                           "and exits") from exc
    return fd


def _recorded_holder(fd: int) -> str:
    """What a locked directory says about the instance that locked it ("<pid> <host>"), or "" (a device)."""
    with contextlib.suppress(OSError):
        return os.getxattr(fd, HOLDER_XATTR).decode(errors="replace").strip()
    return ""


def describe_holder(pids: Sequence[int], recorded: str) -> str:
    """"PID N" from what /proc/locks shows; otherwise as the locked directory names it; otherwise "a process
    in another PID namespace"."""
    if pids:
        return "PID " + ", ".join(str(p) for p in pids)
    pid, _, host = recorded.partition(" ")
    if pid.isdigit():
        return f"PID {pid} on {host or 'an unknown host'} (in another PID namespace)"
    return "a process in another PID namespace"


def parse_locks(text: str, dev: int, ino: int) -> list[int]:
    """PIDs holding a FLOCK write lock on inode ``ino`` of device ``dev``, from ``/proc/locks`` text.

    A line reads ``1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF`` (major and minor in hex); waiters
    (``1: -> FLOCK ...``) and owners hidden from this PID namespace (PID 0 or -1) are left out.
    """
    wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    pids = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" and fields[5] == wanted:
            with contextlib.suppress(ValueError):
                if int(fields[4]) > 0:
                    pids.append(int(fields[4]))
    return sorted(set(pids))


def holder_pids(dev: int, ino: int) -> list[int]:
    try:
        return parse_locks(PROC_LOCKS.read_text(), dev, ino)
    except OSError:
        return []
