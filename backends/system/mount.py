"""Mounts by syscall (``mount(2)``/``umount2(2)`` through libc) and mountinfo parsing.

Mount options coming from a request go through :func:`parse_mount_options`,
which splits them into kernel flags and the filesystem's data string and
refuses anything that changes *what* is mounted or how it propagates.

SELinux context options (``context=``, ``fscontext=``, ``defcontext=``,
``rootcontext=``) are passed through to the filesystem: kubelet itself adds
``context="..."`` for drivers that declare ``seLinuxMount``. Their value is
checked against the SELinux label alphabet, so they cannot smuggle another
option in; a quoted value may contain commas (category sets such as c1,c2).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from loguru import logger

from backends.errors import InvalidArgument, PreconditionFailed, VolumeInUse
from backends.system.errors import SyscallError

MOUNTINFO = "/proc/self/mountinfo"

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

UMOUNT_NOFOLLOW = 8

#: Flags a bind remount may carry (per-mount flags only).
_PER_MOUNT_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME
_PER_MOUNT_FLAGS |= MS_STRICTATIME | MS_NOSYMFOLLOW

#: option -> (flags it sets, flags it clears)
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "nosymfollow": (MS_NOSYMFOLLOW, 0),
    "symfollow": (0, MS_NOSYMFOLLOW),
    "noatime": (MS_NOATIME, MS_RELATIME | MS_STRICTATIME),
    "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0),
    "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, MS_NOATIME | MS_STRICTATIME),
    "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, MS_NOATIME | MS_RELATIME),
    "nostrictatime": (0, MS_STRICTATIME),
    "lazytime": (MS_LAZYTIME, 0),
    "nolazytime": (0, MS_LAZYTIME),
    "silent": (MS_SILENT, 0),
    "loud": (0, MS_SILENT),
}

#: mount(8) options that never reach the kernel; dropped quietly.
_USERSPACE_ONLY = frozenset({"defaults", "auto", "noauto", "nofail", "_netdev", "nomand"})

#: Options that change what is mounted or how it propagates: never from a request.
_FORBIDDEN = frozenset(
    {
        "bind", "rbind", "remount", "move", "rmove", "mand",
        "shared", "rshared", "private", "rprivate", "slave", "rslave", "unbindable", "runbindable",
        "user", "users", "nouser", "owner", "group", "loop",
    }
)  # fmt: skip

_SELINUX_OPTIONS = frozenset({"context", "fscontext", "defcontext", "rootcontext"})
_SELINUX_VALUE = re.compile(r'^(?:"[A-Za-z0-9_.:,-]+"|[A-Za-z0-9_.:-]+)$')
_DATA_OPTION = re.compile(r"^[a-z0-9_.=-]+$")
#: The kernel copies at most one page of mount data.
_MAX_DATA = 4095


def _split_options(options: Sequence[str]) -> Iterator[str]:
    """Each element may itself be a comma list; commas inside double quotes stay."""
    for element in options:
        if "\0" in element:
            raise InvalidArgument(f"mount option {element!r} contains a NUL byte")
        current: list[str] = []
        quoted = False
        for char in element:
            if char == '"':
                quoted = not quoted
            if char == "," and not quoted:
                yield "".join(current).strip()
                current = []
            else:
                current.append(char)
        if quoted:
            raise InvalidArgument(f"mount option {element!r} has an unbalanced quote")
        yield "".join(current).strip()


def parse_mount_options(options: Sequence[str]) -> tuple[int, str]:
    """Split request mount options into (MS_* flags, filesystem data string).

    Later options win (``ro`` then ``rw`` is ``rw``), as with mount(8).
    """
    flags = 0
    data: list[str] = []
    for option in _split_options(options):
        if not option:
            continue
        lowered = option.lower()
        if lowered in _FORBIDDEN or lowered.startswith(("make-", "x-", "comment=")):
            if lowered.startswith(("x-", "comment=")):
                continue
            raise InvalidArgument(f"mount option {option!r} is not allowed")
        if lowered in _USERSPACE_ONLY:
            continue
        if lowered in _FLAG_OPTIONS:
            set_bits, clear_bits = _FLAG_OPTIONS[lowered]
            flags = (flags & ~clear_bits) | set_bits
            continue
        name, sep, value = option.partition("=")
        if sep and name in _SELINUX_OPTIONS:
            if not _SELINUX_VALUE.match(value):
                raise InvalidArgument(f"mount option {option!r} has a malformed SELinux context")
            data.append(option)
            continue
        if not _DATA_OPTION.match(option):
            raise InvalidArgument(f"mount option {option!r} contains characters that are not allowed")
        data.append(option)
    joined = ",".join(data)
    if len(joined) > _MAX_DATA:
        raise InvalidArgument("mount options are longer than the kernel accepts")
    return flags, joined


# ------------------------------------------------------------------ mountinfo

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    r"""Decode mountinfo's octal escapes (``\040`` space, ``\011`` tab, ``\012`` newline, ``\134`` backslash)."""
    if "\\" not in field:
        return field
    raw = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)
    # The kernel escapes bytes, so re-decode what were UTF-8 byte sequences.
    try:
        return raw.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return raw


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: str
    options: tuple[str, ...]
    fs_type: str
    source: str
    super_options: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def readonly(self) -> bool:
        """Read-only for writers through this mount (per-mount or superblock ``ro``)."""
        return "ro" in self.options or "ro" in self.super_options

    @classmethod
    def from_line(cls, line: str) -> MountInfo:
        fields = line.rstrip("\n").split(" ")
        try:
            separator = fields.index("-", 6)
            return cls(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                major_minor=fields[2],
                root=unescape(fields[3]),
                mount_point=unescape(fields[4]),
                options=tuple(fields[5].split(",")),
                fs_type=unescape(fields[separator + 1]),
                source=unescape(fields[separator + 2]),
                super_options=tuple(fields[separator + 3].split(",")) if len(fields) > separator + 3 else (),
                optional=tuple(fields[6:separator]),
            )
        except (ValueError, IndexError) as exc:
            raise ValueError(f"malformed mountinfo line: {line!r}") from exc


def parse_mountinfo(text: str) -> list[MountInfo]:
    return [MountInfo.from_line(line) for line in text.splitlines() if line.strip()]


def _read_mountinfo() -> list[MountInfo]:
    text = Path(MOUNTINFO).read_text(encoding="utf-8", errors="surrogateescape")
    return parse_mountinfo(text)


async def mounts() -> list[MountInfo]:
    """Every mount in our mount namespace (one read of /proc/self/mountinfo)."""
    return await anyio.to_thread.run_sync(_read_mountinfo)


def topmost(entries: Sequence[MountInfo], mount_point: str) -> MountInfo | None:
    """The mount visible at exactly ``mount_point`` (the last of a stack), or None."""
    wanted = os.path.normpath(mount_point)
    at_path = [entry for entry in entries if entry.mount_point == wanted]
    if not at_path:
        return None
    parents = {entry.parent_id for entry in at_path}
    on_top = [entry for entry in at_path if entry.mount_id not in parents]
    return (on_top or at_path)[-1]


def stacked(entries: Sequence[MountInfo], mount_point: str) -> list[MountInfo]:
    """Every mount at exactly ``mount_point``, in mount order (bottom first)."""
    wanted = os.path.normpath(mount_point)
    return [entry for entry in entries if entry.mount_point == wanted]


async def find_mount(mount_point: str) -> MountInfo | None:
    """The topmost mount at exactly ``mount_point`` (normalised, symlinks not resolved)."""
    return topmost(await mounts(), mount_point)


# ------------------------------------------------------------------ syscalls


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.mount.restype = ctypes.c_int
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.umount2.restype = ctypes.c_int
    return libc


def _mount_sync(source: str, target: str, fs_type: str | None, flags: int, data: str | None) -> None:
    result = _libc().mount(
        os.fsencode(source),
        os.fsencode(target),
        fs_type.encode() if fs_type else None,
        flags,
        data.encode() if data else None,
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def _mount_error(call: str, source: str, target: str, exc: OSError) -> SyscallError:
    code = exc.errno or 0
    hint = ""
    if code == errno.EBUSY:
        hint = f"{source} is already mounted or {target} is busy"
    elif code == errno.EINVAL:
        hint = "bad options, or the source holds no filesystem of that type"
    elif code == errno.ENOENT:
        hint = "source or target does not exist"
    elif code == errno.EROFS:
        hint = "source is read-only"
    return SyscallError(call, code, f"{source} -> {target}", hint)


async def mount(source: str, target: str, fs_type: str, *, options: Sequence[str] = (), readonly: bool = False) -> None:
    """Mount a filesystem. ``options`` are request mount options (validated)."""
    flags, data = parse_mount_options(options)
    if readonly:
        flags |= MS_RDONLY
    try:
        await anyio.to_thread.run_sync(_mount_sync, source, target, fs_type, flags, data)
    except OSError as exc:
        raise _mount_error("mount", source, target, exc) from exc
    logger.debug("mounted {src} on {dst} ({fs}, flags={flags:#x}, data={data!r})", src=source, dst=target,
                 fs=fs_type, flags=flags, data=data)  # fmt: skip


def _bind_sync(source: str, target: str, remount_flags: int | None) -> None:
    _mount_sync(source, target, None, MS_BIND, None)
    if remount_flags is None:
        return
    # Keep the per-mount flags the new mount inherited (a user namespace forbids
    # dropping locked ones), then add ours.
    inherited = _statvfs_mount_flags(target)
    try:
        _mount_sync("none", target, None, MS_BIND | MS_REMOUNT | inherited | remount_flags, None)
    except OSError:
        _libc().umount2(os.fsencode(target), UMOUNT_NOFOLLOW)  # undo step one
        raise


def _statvfs_mount_flags(path: str) -> int:
    f_flag = os.statvfs(path).f_flag
    pairs = (
        (os.ST_RDONLY, MS_RDONLY),
        (os.ST_NOSUID, MS_NOSUID),
        (os.ST_NODEV, MS_NODEV),
        (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, MS_NOATIME),
        (os.ST_NODIRATIME, MS_NODIRATIME),
        (os.ST_RELATIME, MS_RELATIME),
    )
    return functools.reduce(lambda acc, pair: acc | (pair[1] if f_flag & pair[0] else 0), pairs, 0)


async def bind_mount(source: str, target: str, *, readonly: bool = False, options: Sequence[str] = ()) -> None:
    """Bind ``source`` onto ``target``; read-only and per-mount ``options`` (nosuid,
    noexec, noatime, ...) are applied by a second, remount call, since the first
    ``MS_BIND`` call ignores them. Filesystem data options are refused here."""
    flags, data = parse_mount_options(options)
    if data:
        raise InvalidArgument(f"options {data!r} cannot be applied to a bind mount")
    if flags & ~_PER_MOUNT_FLAGS:
        raise InvalidArgument("only per-mount flags can be applied to a bind mount")
    if readonly:
        flags |= MS_RDONLY
    remount = flags if flags else None
    try:
        await anyio.to_thread.run_sync(_bind_sync, source, target, remount)
    except OSError as exc:
        raise _mount_error("mount --bind", source, target, exc) from exc
    logger.debug("bind-mounted {src} on {dst} (flags={flags:#x})", src=source, dst=target, flags=flags)


def _umount_sync(target: str) -> bool:
    if _libc().umount2(os.fsencode(target), UMOUNT_NOFOLLOW) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):
        return False
    if code == errno.EBUSY:
        raise VolumeInUse(f"{target} is busy (open files or a process working inside it); not unmounted")
    raise SyscallError("umount2", code, target)


def _clear_sync(target: str, limit: int, remove: bool) -> int:
    count = 0
    while _umount_sync(target):
        count += 1
        if count >= limit:
            raise PreconditionFailed(f"more than {limit} mounts are stacked at {target}")
    if remove:
        where = Path(target)
        try:
            if where.is_dir() and not where.is_symlink():
                where.rmdir()
            else:
                where.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise PreconditionFailed(f"cannot remove {target} after unmounting it: {exc.strerror}") from exc
    return count


async def clear_target(target: str, *, remove: bool = True, limit: int = 32) -> int:
    """Unmount every mount stacked at ``target`` (topmost first), then remove the
    directory or file when ``remove``; one worker-thread hop. Returns how many
    mounts were removed. A missing target is fine; a non-empty directory is not
    deleted (PreconditionFailed); a busy mount raises VolumeInUse."""
    count = await anyio.to_thread.run_sync(_clear_sync, target, limit, remove)
    if count:
        logger.debug("unmounted {n} mount(s) at {dst}", n=count, dst=target)
    return count


async def unmount(target: str) -> bool:
    """Unmount the topmost mount at ``target``. Returns False when nothing was
    mounted there (not a mount point, or no such path); EBUSY -> VolumeInUse."""
    done = await anyio.to_thread.run_sync(_umount_sync, target)
    if done:
        logger.debug("unmounted {dst}", dst=target)
    return done


# ------------------------------------------------------------- cheap checks


@dataclass(frozen=True)
class PathState:
    """What ``stat``/``statvfs`` say about a path, without reading mountinfo.

    ``mount_point`` compares the path's device with its parent's: exact for a
    filesystem mounted there, blind to a bind mount from the same filesystem
    (use :func:`find_mount` where that matters). ``through_symlink``: some
    existing component of the path (the last one included) is a symbolic link.
    """

    exists: bool
    mount_point: bool = False
    dev: int = 0
    ino: int = 0
    rdev: int = 0
    mode: int = 0
    readonly: bool = False
    size: int = 0
    through_symlink: bool = False

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_block(self) -> bool:
        return stat.S_ISBLK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def major_minor(self) -> str:
        """``major:minor`` of the device node itself (for block devices)."""
        return f"{os.major(self.rdev)}:{os.minor(self.rdev)}"

    def same_object(self, other: PathState) -> bool:
        """Same inode (a bind mount shows its source's), or the same device node."""
        if not (self.exists and other.exists):
            return False
        if self.is_block or other.is_block:
            return self.is_block and other.is_block and self.rdev == other.rdev
        return (self.dev, self.ino) == (other.dev, other.ino)


def _path_state_sync(path: str) -> PathState:
    normal = os.path.normpath(path)
    where = Path(normal)
    through_symlink = os.path.realpath(normal) != normal
    try:
        st = where.stat()
    except FileNotFoundError:
        return PathState(exists=False, through_symlink=through_symlink)
    except OSError as exc:
        raise SyscallError.from_oserror("stat", path, exc) from exc
    try:
        parent_dev = where.parent.stat().st_dev
        readonly = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except FileNotFoundError:  # removed while we looked
        return PathState(exists=False, through_symlink=through_symlink)
    except OSError as exc:
        raise SyscallError.from_oserror("stat", path, exc) from exc
    return PathState(
        exists=True,
        mount_point=st.st_dev != parent_dev or where == where.parent,
        dev=st.st_dev,
        ino=st.st_ino,
        rdev=st.st_rdev,
        mode=st.st_mode,
        readonly=readonly,
        size=st.st_size,
        through_symlink=through_symlink,
    )


async def path_state(path: str) -> PathState:
    """stat + statvfs of ``path`` (and stat of its parent), and whether it goes through a symbolic link; in a
    worker thread."""
    return await anyio.to_thread.run_sync(_path_state_sync, path)


def _is_empty_sync(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except NotADirectoryError:
        return os.stat(path).st_size == 0


async def is_empty(path: str) -> bool:
    """True for a directory without entries or an empty file (``path`` must exist)."""
    try:
        return await anyio.to_thread.run_sync(_is_empty_sync, path)
    except OSError as exc:
        raise SyscallError.from_oserror("scandir", path, exc) from exc


def _create_sync(path: str, file: bool, mode: int) -> None:
    where = Path(path)
    if file:
        where.parent.mkdir(parents=True, exist_ok=True)
        where.touch(mode=mode, exist_ok=True)
    else:
        where.mkdir(mode=mode, parents=True, exist_ok=True)


async def create(path: str, *, file: bool = False, mode: int = 0o750) -> None:
    """Make ``path`` (with its parents): a directory, or an empty regular file when ``file``; present is fine."""
    try:
        await anyio.to_thread.run_sync(_create_sync, path, file, mode)
    except OSError as exc:
        raise SyscallError.from_oserror("mkdir" if not file else "create", path, exc) from exc


def _remove_empty_sync(path: str) -> bool:
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(path)
        else:
            return False
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            return False
        raise SyscallError.from_oserror("remove", path, exc) from exc
    return True


async def remove_empty(path: str) -> bool:
    """Remove ``path`` if it is an empty directory or an empty regular file (a symlink is never followed);
    True when it is gone (or was already), False when it holds something and was left alone."""
    return await anyio.to_thread.run_sync(_remove_empty_sync, path)


def _canonical_sync(path: str) -> str:
    return os.path.realpath(path)


async def canonical(path: str) -> str:
    """``path`` with every symbolic link resolved (``/dev/vg/lv`` -> ``/dev/dm-3``)."""
    return await anyio.to_thread.run_sync(_canonical_sync, path)
