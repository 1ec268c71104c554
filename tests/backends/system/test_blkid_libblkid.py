"""The in-process libblkid probe answers exactly as ``blkid -p -o export`` does, on real devices.

Each case prepares a loop device, probes it both ways and asserts the same
:class:`Probe`; the expected type is asserted too, so that two equal blank
answers cannot pass for a signature. A counting runner proves the in-process
path spawns nothing; a forced fallback proves the tool path still works.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends.system import blkid
from backends.system.errors import CommandError, SyscallError
from backends.system.runner import ProcessRunner, Result
from tests.backends.system.fixtures import LoopFactory, loops, make_image, run, scratch

__all__ = ["loops", "scratch"]  # fixtures used below

pytestmark = [pytest.mark.anyio, pytest.mark.root]

MIB = 1 << 20
DEVICE_BYTES = 300 * MIB
LVM_CONFIG = "devices { use_devicesfile = 0 } global { activation = 0 }"


class CountingRunner(ProcessRunner):
    """A plain local runner (so the probe runs in-process) that counts the commands it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - passed through to ProcessRunner
        check: bool = True,
        stdin: bytes | None = None,
    ) -> Result:
        self.calls.append(tuple(argv))
        return await super().run(argv, timeout=timeout, check=check, stdin=stdin)


@dataclass
class ToolRunner:
    """Not a ProcessRunner, so the probe asks the ``blkid`` tool; runs it locally."""

    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - passed through to ProcessRunner
        check: bool = True,
        stdin: bytes | None = None,
    ) -> Result:
        self.calls.append(tuple(argv))
        return await ProcessRunner().run(argv, timeout=timeout, check=check, stdin=stdin)


@pytest.fixture
def no_libblkid(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """libblkid cannot be loaded: probes fall back to the tool."""
    monkeypatch.setattr(blkid, "LIBBLKID", "libblkid-localcsi-test-absent.so.1")
    blkid._forget_library()
    yield
    monkeypatch.undo()
    blkid._forget_library()


# ------------------------------------------------------------ device makers


def write_at(device: str, offset: int, data: bytes) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def luks1_header(device: str) -> None:
    """The fields libblkid reads from a LUKS1 header: magic, version, UUID."""
    header = bytearray(592)
    header[0:6] = b"LUKS\xba\xbe"
    struct.pack_into(">H", header, 6, 1)
    header[8:11] = b"aes"
    header[40:52] = b"xts-plain64"
    header[72:78] = b"sha256"
    header[168:204] = str(uuid.UUID(int=0x1234)).encode()
    write_at(device, 0, bytes(header))


def md090_superblock(device: str, size: int) -> None:
    """An md v0.90 superblock (native endian) in the last 64 KiB-aligned slot."""
    sb = bytearray(4096)
    struct.pack_into("<4I", sb, 0, 0xA92B4EFC, 0, 90, 0)
    struct.pack_into("<I", sb, 20, 0x11111111)
    struct.pack_into("<3I", sb, 52, 0x22222222, 0x33333333, 0x44444444)
    write_at(device, (size & ~0xFFFF) - 0x10000, bytes(sb))


def two_signatures(device: str, scratch: Path) -> None:
    """ext4, then an XFS primary superblock over sector 0: libblkid sees both."""
    xfs_image = make_image(scratch, 300 * MIB, "xfs-donor")
    run("mkfs.xfs", "-q", str(xfs_image))
    run("mkfs.ext4", "-q", device)
    write_at(device, 0, xfs_image.read_bytes()[:512])


def tool(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, input=stdin)


Prepare = Callable[[str, Path], None]

#: name -> (prepare(device, scratch), TYPE, USAGE, PTTYPE), on a 300 MiB loop device.
CASES: dict[str, tuple[Prepare, str, str, str]] = {
    "blank": (lambda d, s: None, "", "", ""),
    "ext4": (lambda d, s: tool("mkfs.ext4", "-q", "-L", 'a "b" $c', d), "ext4", "filesystem", ""),
    "xfs": (lambda d, s: tool("mkfs.xfs", "-q", "-L", "data", d), "xfs", "filesystem", ""),
    "btrfs": (lambda d, s: tool("mkfs.btrfs", "-q", d), "btrfs", "filesystem", ""),
    "swap": (lambda d, s: tool("mkswap", "-L", "sw", d), "swap", "other", ""),
    "gpt": (lambda d, s: tool("sgdisk", "-n", "1:0:+10M", d), "", "", "gpt"),
    "dos": (lambda d, s: tool("sfdisk", "-q", d, stdin="start=2048, size=20480\n"), "", "", "dos"),
    "lvm2_member": (lambda d, s: tool("pvcreate", "-q", "--config", LVM_CONFIG, d), "LVM2_member", "raid", ""),
    "luks": (lambda d, s: luks1_header(d), "crypto_LUKS", "crypto", ""),
    "md": (lambda d, s: md090_superblock(d, DEVICE_BYTES), "linux_raid_member", "raid", ""),
}
