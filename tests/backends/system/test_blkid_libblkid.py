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
from pathlib import Path
from typing import Any

import pytest

from backends.system import blkid
from backends.system.errors import CommandError, SyscallError
from backends.system.runner import ProcessRunner, Result
from e2e.files import write_at
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
        timeout: float = 60.0,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> Result:
        self.calls.append(tuple(argv))
        return await super().run(argv, timeout=timeout, check=check, stdin=stdin)


class ToolRunner:
    """Not a ProcessRunner, so the probe asks the ``blkid`` tool; runs it locally, counted."""

    def __init__(self) -> None:
        self.counted = CountingRunner()

    @property
    def calls(self) -> list[tuple[str, ...]]:
        return self.counted.calls

    async def run(self, argv: Sequence[str], **options: Any) -> Result:
        return await self.counted.run(argv, **options)


@pytest.fixture
def no_libblkid(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """libblkid cannot be loaded: probes fall back to the tool."""
    monkeypatch.setattr(blkid, "LIBBLKID", "libblkid-localcsi-test-absent.so.1")
    blkid._forget_library()
    yield
    monkeypatch.undo()
    blkid._forget_library()


# ------------------------------------------------------------ device makers


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


async def _device(scratch: Path, loops: LoopFactory) -> str:
    return (await loops(make_image(scratch, DEVICE_BYTES))).path


@pytest.mark.parametrize("case", sorted(CASES))
async def test_in_process_probe_equals_the_tool(case: str, scratch: Path, loops: LoopFactory) -> None:
    prepare, fs_type, usage, pt_type = CASES[case]
    device = await _device(scratch, loops)
    prepare(device, scratch)
    local, tool_runner = CountingRunner(), ToolRunner()
    in_process = await blkid.probe(local, device)
    by_tool = await blkid.probe(tool_runner, device)
    assert local.calls == []
    assert tool_runner.calls == [("blkid", "-p", "-o", "export", device)]
    assert in_process == by_tool
    assert in_process.blank == (case == "blank")
    assert (in_process.fs_type, in_process.usage, in_process.pt_type) == (fs_type, usage, pt_type)
    assert not in_process.ambiguous


async def test_labels_come_through_unescaped(scratch: Path, loops: LoopFactory) -> None:
    device = await _device(scratch, loops)
    tool("mkfs.ext4", "-q", "-L", 'a "b" $c', device)
    found = await blkid.probe(CountingRunner(), device)
    assert found.raw["LABEL"] == 'a "b" $c'
    argv = ["blkid", "-p", "-s", "UUID", "-o", "value", device]
    assert found.raw["UUID"] == subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


async def test_two_signatures_are_ambiguous_both_ways(scratch: Path, loops: LoopFactory) -> None:
    device = await _device(scratch, loops)
    two_signatures(device, scratch)
    in_process = await blkid.probe(CountingRunner(), device)
    assert in_process == await blkid.probe(ToolRunner(), device)
    assert in_process.ambiguous and not in_process.blank


def unused_block_major() -> int:
    """A major number reserved for local use that no driver holds here: opening it gives ENXIO."""
    text = Path("/proc/devices").read_text().split("Block devices:")[1]
    taken = {int(line.split()[0]) for line in text.splitlines() if line.strip()}
    free: list[int] = [m for m in [*range(60, 64), *range(120, 128), *range(240, 255)] if m not in taken]
    return free[0]


def device_node(scratch: Path) -> str:
    node = scratch / "no-driver"
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(unused_block_major(), 0))
    return str(node)


async def test_a_device_that_cannot_be_opened_is_an_error_never_blank(scratch: Path) -> None:
    with pytest.raises(SyscallError, match="ENXIO"):
        await blkid.probe(CountingRunner(), device_node(scratch))


async def test_a_device_with_nothing_to_read_is_an_error_never_blank(scratch: Path, loops: LoopFactory) -> None:
    # The tool answers "nothing found" here, silently; the in-process probe refuses.
    device = (await loops(make_image(scratch, 0, "empty"))).path
    with pytest.raises(SyscallError, match="no data to probe"):
        await blkid.probe(CountingRunner(), device)


async def test_a_missing_path_is_an_error_in_process(scratch: Path) -> None:
    with pytest.raises(SyscallError, match="ENOENT"):
        await blkid.probe(CountingRunner(), str(scratch / "gone"))


async def test_something_that_is_not_a_device_is_an_error(scratch: Path) -> None:
    # A directory opens O_RDONLY, but libblkid will not probe it.
    with pytest.raises(SyscallError, match="EINVAL"):
        await blkid.probe(CountingRunner(), str(scratch))


@pytest.mark.usefixtures("no_libblkid")
async def test_without_libblkid_the_tool_answers(scratch: Path, loops: LoopFactory) -> None:
    device = await _device(scratch, loops)
    local = CountingRunner()
    assert (await blkid.probe(local, device)).blank
    tool("mkfs.xfs", "-q", device)
    found = await blkid.probe(local, device)
    assert (found.blank, found.fs_type, found.usage) == (False, "xfs", "filesystem")
    assert local.calls == [("blkid", "-p", "-o", "export", device)] * 2


@pytest.mark.usefixtures("no_libblkid")
async def test_without_libblkid_tool_errors_still_raise(scratch: Path) -> None:
    with pytest.raises(CommandError, match="No such device or address"):
        await blkid.probe(CountingRunner(), device_node(scratch))


async def test_missing_libblkid_is_logged_once_at_info(monkeypatch: pytest.MonkeyPatch) -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="INFO", format="{level} {message}")
    monkeypatch.setattr(blkid, "LIBBLKID", "libblkid-localcsi-test-absent.so.1")
    blkid._forget_library()
    try:
        assert blkid._library() is None
        assert blkid._library() is None
    finally:
        logger.remove(sink)
        monkeypatch.undo()
        blkid._forget_library()
    assert len(lines) == 1
    assert lines[0].startswith("INFO libblkid unavailable") and "absent" in lines[0]
    assert blkid._library() is not None


async def test_a_command_prefix_means_the_tool(scratch: Path, loops: LoopFactory) -> None:
    # With a prefix (nsenter into the host), paths are the host's: never probe them here.
    device = await _device(scratch, loops)
    prefixed = ProcessRunner(prefix=["env"])
    assert not blkid._probes_in_process(prefixed)
    assert blkid._probes_in_process(ProcessRunner())
    assert (await blkid.probe(prefixed, device)).blank


async def test_a_tiny_partitioned_disk_is_probed_as_blkid_does(scratch: Path, loops: LoopFactory) -> None:
    # blkid -p looks only for a partition table on a whole disk of at most 1440 KiB.
    device = (await loops(make_image(scratch, MIB, "floppy"))).path
    tool("sfdisk", "-q", device, stdin="start=64, size=512\n")
    in_process = await blkid.probe(CountingRunner(), device)
    assert in_process == await blkid.probe(ToolRunner(), device)
    assert (in_process.blank, in_process.pt_type) == (False, "dos")
