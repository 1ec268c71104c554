"""Does a device hold anything? A low-level libblkid probe, in-process or via ``blkid -p``.

Two ways to ask, one answer (:class:`Probe`):

* **in-process** (the normal case): libblkid through ctypes, in a worker
  thread, with the same chains and flags ``blkid -p`` uses. No process is
  spawned, which matters on NodeStage (``blkid -p`` costs more than mkfs.ext4).
* **the tool**, ``blkid -p -o export``, when libblkid cannot be loaded, or when
  the runner is not a plain local :class:`ProcessRunner` (a command prefix such
  as ``nsenter`` means paths live in another mount namespace, and a fake runner
  in tests answers for devices that do not exist).

Only a clean "nothing found" is blank. Everything else is "not blank" or an error:

* any signature at all (a filesystem, a partition table, LVM, RAID, LUKS,
  swap, ...): not blank;
* several signatures (libblkid -2, tool exit 8 or "ambivalent" in stderr):
  ambiguous, never blank;
* could not look (the device cannot be opened or read, libblkid -1, tool exit
  2 *with* an error message): an error, because "could not look" is not
  "found nothing". In-process this is a :class:`SyscallError`, from the tool a
  :class:`CommandError`; both are :class:`backends.errors.SystemFailure`.

As ``blkid -p`` does, a result holding neither TYPE nor PTTYPE (only
PART_ENTRY_* details of a partition device) counts as nothing found.

Known limits, shown in the golden files: a signature that blkid no longer
recognises (an XFS whose primary superblock was zeroed) probes blank; only
data that some signature still marks is protected. The tool also answers
"nothing" (exit 2, silently) for a missing path and for a device of size 0
(a loop device with nothing attached); the in-process probe raises for both.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import anyio
from loguru import logger

from backends.system.errors import CommandError, SyscallError
from backends.system.runner import ProcessRunner, Result, Runner

BLKID = "blkid"
PROBE_TIMEOUT = 30.0

#: The shared library the in-process probe loads (soname, found by the dynamic loader).
LIBBLKID = "libblkid.so.1"

_EXIT_FOUND = 0
_EXIT_NOTHING = 2
_EXIT_AMBIVALENT = 8

_ESCAPE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: m.group(1), value)


def parse_export(text: str) -> dict[str, str]:
    """``KEY=value`` lines as written by ``blkid -o export`` (values are backslash-escaped)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = _unescape(value)
    return values


@dataclass(frozen=True)
class Probe:
    blank: bool
    fs_type: str
    usage: str
    pt_type: str
    ambiguous: bool
    raw: Mapping[str, str]

    @property
    def description(self) -> str:
        """Human words for what was found, for error messages."""
        if self.blank:
            return "nothing (blank)"
        if self.ambiguous:
            return "several conflicting signatures (ambiguous probe)"
        parts: list[str] = []
        if self.fs_type:
            parts.append(f"{self.fs_type} ({self.usage or 'unknown usage'})")
        if self.pt_type:
            parts.append(f"a {self.pt_type} partition table")
        if not parts:
            keys = ", ".join(sorted(k for k in self.raw if k != "DEVNAME"))
            parts.append(f"unidentified data (blkid keys: {keys or 'none'})")
        return " and ".join(parts)

    @classmethod
    def from_result(cls, result: Result) -> Probe:
        raw = parse_export(result.stdout)
        raw.pop("DEVNAME", None)
        stderr = result.stderr.strip()
        ambiguous = result.returncode == _EXIT_AMBIVALENT or "ambivalent" in stderr.lower()
        if ambiguous:
            return cls._found(raw, ambiguous=True)
        if result.returncode == _EXIT_NOTHING and not raw and not stderr:
            return cls._nothing()
        if result.returncode == _EXIT_FOUND and raw:
            return cls._found(raw)
        # Exit 2 with an error message, 0 without output, 4 (usage), anything else:
        # we could not tell what is there.
        raise CommandError(result.argv, result.returncode, stderr or "blkid gave no usable answer")

    @classmethod
    def _nothing(cls) -> Probe:
        return cls(True, "", "", "", False, _frozen({}))

    @classmethod
    def _found(cls, raw: Mapping[str, str], *, ambiguous: bool = False) -> Probe:
        return cls(False, raw.get("TYPE", ""), raw.get("USAGE", ""), raw.get("PTTYPE", ""), ambiguous, _frozen(raw))


def _frozen(values: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(values))


# ------------------------------------------------------------------ libblkid

# From blkid.h (stable ABI of libblkid.so.1).
_SUBLKS_LABEL = 1 << 1
_SUBLKS_UUID = 1 << 3
_SUBLKS_TYPE = 1 << 5
_SUBLKS_SECTYPE = 1 << 6
_SUBLKS_USAGE = 1 << 7
_SUBLKS_VERSION = 1 << 8
_PARTS_ENTRY_DETAILS = 1 << 2

#: What ``blkid -p`` asks of the superblocks chain; the same keys as its export output.
_SUPERBLOCK_FLAGS = _SUBLKS_LABEL | _SUBLKS_UUID | _SUBLKS_TYPE | _SUBLKS_SECTYPE | _SUBLKS_USAGE | _SUBLKS_VERSION
#: ``blkid -p`` first looks only for a partition table on a whole disk this small (a floppy).
_SMALL_DISK_BYTES = 1440 * 1024

_PROBE_FOUND = 0
_PROBE_NOTHING = 1
_PROBE_AMBIVALENT = -2

_VoidP = ctypes.c_void_p
_Int = ctypes.c_int
_CharPP = ctypes.POINTER(ctypes.c_char_p)
_VoidPP = ctypes.POINTER(ctypes.c_void_p)
_SizeP = ctypes.POINTER(ctypes.c_size_t)

#: name -> (restype, argtypes) of every libblkid function used.
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "blkid_new_probe_from_filename": (_VoidP, [ctypes.c_char_p]),
    "blkid_free_probe": (None, [_VoidP]),
    "blkid_probe_enable_superblocks": (_Int, [_VoidP, _Int]),
    "blkid_probe_set_superblocks_flags": (_Int, [_VoidP, _Int]),
    "blkid_probe_enable_partitions": (_Int, [_VoidP, _Int]),
    "blkid_probe_set_partitions_flags": (_Int, [_VoidP, _Int]),
    "blkid_probe_get_fd": (_Int, [_VoidP]),
    "blkid_probe_get_size": (ctypes.c_int64, [_VoidP]),
    "blkid_probe_is_wholedisk": (_Int, [_VoidP]),
    "blkid_do_fullprobe": (_Int, [_VoidP]),
    "blkid_do_safeprobe": (_Int, [_VoidP]),
    "blkid_probe_has_value": (_Int, [_VoidP, ctypes.c_char_p]),
    "blkid_probe_numof_values": (_Int, [_VoidP]),
    "blkid_probe_get_value": (_Int, [_VoidP, _Int, _CharPP, _VoidPP, _SizeP]),
}

_load_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []  # empty until the first attempt, then [library or None]


def _open_library(name: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(name, use_errno=True)
    for function, (restype, argtypes) in _SIGNATURES.items():
        symbol = getattr(lib, function)  # AttributeError when the symbol is missing
        symbol.restype = restype
        symbol.argtypes = argtypes
    return lib


def _library() -> ctypes.CDLL | None:
    """libblkid, loaded on first use; None (said once, at INFO) when it cannot be."""
    with _load_lock:
        if not _loaded:
            try:
                _loaded.append(_open_library(LIBBLKID))
            except (OSError, AttributeError) as exc:
                logger.info("libblkid unavailable ({why}); probing devices with `blkid -p` instead", why=exc)
                _loaded.append(None)
        return _loaded[0]


def _forget_library() -> None:
    """Load again on next use (tests switch :data:`LIBBLKID`)."""
    with _load_lock:
        _loaded.clear()


def _last_errno(default: int = errno.EIO) -> int:
    return ctypes.get_errno() or default


def _open_probe(lib: ctypes.CDLL, device: str) -> int:
    ctypes.set_errno(0)
    handle = lib.blkid_new_probe_from_filename(os.fsencode(device))
    if not handle:
        # open(2) failed (errno says why), or libblkid could not size the device.
        raise SyscallError("blkid_new_probe_from_filename", _last_errno(), device)
    return int(handle)


def _partition_table_only(lib: ctypes.CDLL, pr: int, device: str) -> bool:
    """``blkid -p`` on a tiny whole disk: a partition table there hides any filesystem."""
    st = os.fstat(lib.blkid_probe_get_fd(pr))
    if stat.S_ISCHR(st.st_mode) or lib.blkid_probe_get_size(pr) > _SMALL_DISK_BYTES:
        return False
    if not lib.blkid_probe_is_wholedisk(pr):
        return False
    lib.blkid_probe_enable_superblocks(pr, 0)
    rc = lib.blkid_do_fullprobe(pr)
    if rc < 0:
        raise SyscallError("blkid_do_fullprobe", _last_errno(), device)
    return bool(lib.blkid_probe_has_value(pr, b"PTTYPE"))


def _values(lib: ctypes.CDLL, pr: int) -> dict[str, str]:
    values: dict[str, str] = {}
    name = ctypes.c_char_p()
    data = ctypes.c_void_p()
    size = ctypes.c_size_t()
    for index in range(lib.blkid_probe_numof_values(pr)):
        if lib.blkid_probe_get_value(pr, index, ctypes.byref(name), ctypes.byref(data), ctypes.byref(size)):
            continue
        if not name.value or data.value is None:
            continue
        text = ctypes.string_at(data.value, size.value).split(b"\0", 1)[0]
        values[name.value.decode("ascii", "replace")] = text.decode("utf-8", "replace")
    return values


def _probe_open(lib: ctypes.CDLL, pr: int, device: str) -> Probe:
    if lib.blkid_probe_get_size(pr) <= 0:
        # Nothing to read (no medium, a loop device with nothing attached): not the same as empty.
        raise SyscallError("blkid_probe_get_size", errno.ENOMEDIUM, device, "the device has no data to probe")
    lib.blkid_probe_set_superblocks_flags(pr, _SUPERBLOCK_FLAGS)
    lib.blkid_probe_enable_partitions(pr, 1)
    if _partition_table_only(lib, pr, device):
        return Probe._found(_values(lib, pr))
    lib.blkid_probe_set_partitions_flags(pr, _PARTS_ENTRY_DETAILS)
    lib.blkid_probe_enable_superblocks(pr, 1)
    ctypes.set_errno(0)
    rc = lib.blkid_do_safeprobe(pr)
    if rc == _PROBE_AMBIVALENT:
        return Probe._found({}, ambiguous=True)
    if rc == _PROBE_NOTHING:
        return Probe._nothing()
    if rc != _PROBE_FOUND:
        raise SyscallError("blkid_do_safeprobe", _last_errno(), device, f"libblkid returned {rc}")
    values = _values(lib, pr)
    if "TYPE" not in values and "PTTYPE" not in values:
        return Probe._nothing()  # only PART_ENTRY_* of a partition device: as `blkid -p` answers
    return Probe._found(values)


def _probe_sync(device: str) -> Probe | None:
    """The in-process probe, blocking (run it in a worker thread); None without libblkid."""
    lib = _library()
    if lib is None:
        return None
    pr = _open_probe(lib, device)
    try:
        return _probe_open(lib, pr, device)
    finally:
        lib.blkid_free_probe(pr)


def _probes_in_process(runner: Runner) -> bool:
    """Only a plain local runner sees the same paths this process does."""
    return isinstance(runner, ProcessRunner) and not runner.prefix


async def _probe_in_process(device: str) -> Probe | None:
    with anyio.move_on_after(PROBE_TIMEOUT):
        # A hung read cannot be interrupted: abandon the thread; it frees its probe once the read returns.
        return await anyio.to_thread.run_sync(_probe_sync, device, abandon_on_cancel=True)
    raise SyscallError("blkid probe", errno.ETIMEDOUT, device, f"no answer within {PROBE_TIMEOUT:g}s")


async def _probe_with_tool(runner: Runner, device: str) -> Probe:
    result = await runner.run([BLKID, "-p", "-o", "export", device], timeout=PROBE_TIMEOUT, check=False)
    return Probe.from_result(result)


async def probe(runner: Runner, device: str) -> Probe:
    """Low-level probe of ``device`` for filesystems, partition tables and other signatures."""
    found = await _probe_in_process(device) if _probes_in_process(runner) else None
    if found is None:
        found = await _probe_with_tool(runner, device)
    logger.trace("probe {dev}: {what}", dev=device, what=found.description)
    return found
