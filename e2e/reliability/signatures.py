"""Phase 4: never format data. Foreign signatures are planted in a loopfile volume's image before NodeStage.

For each signature (a filesystem other than the one asked for, swap, GPT and DOS partition tables, an LVM
physical volume written by ``pvcreate`` with activation off, an md RAID v1.2 superblock, a LUKS2 header, and
an ambiguous probe: ext4 plus an ISO 9660 descriptor) NodeStage must answer FAILED_PRECONDITION, leave the
image byte-for-byte unchanged, mount nothing, leave no loop device attached, and log one WARNING-or-worse line
naming what it found (what an operator's event would carry). A blank volume is formatted, as a control.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.reliability.common import MIB, THIN, PhaseResult, ScratchNode, log_lines, mount_cap, scratch_node
from e2e.sim import host

VOLUME_BYTES = 64 * MIB


def _put(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _sfdisk(label: str) -> Callable[[Path], None]:
    def plant(path: Path) -> None:
        subprocess.run(["sfdisk", "-q", str(path)], input=f"label: {label}\n,,L\n", text=True, check=True,
                       capture_output=True, timeout=30)
    return plant


def _mkfs_ext4(path: Path) -> None:
    host.run(["mkfs.ext4", "-q", "-F", str(path)])


def _mkswap(path: Path) -> None:
    host.run(["mkswap", str(path)])


def _lvm(path: Path) -> None:
    device = host.attach_loop(path)
    try:
        host.run(["pvcreate", "-q", "--config", "global { activation = 0 }", device])
    finally:
        host.run(["losetup", "-d", device], check=False)


def _md_raid(path: Path) -> None:
    """An md v1.2 superblock (magic 0xa92b4efc, 4 KiB in) with a valid checksum."""
    sb = bytearray(256)
    struct.pack_into("<II", sb, 0, 0xA92B4EFC, 1)
    sb[16:32] = bytes(range(1, 17))
    sb[32:40] = b"relmd\0\0\0"
    struct.pack_into("<i", sb, 72, 1)
    struct.pack_into("<QII", sb, 80, 100_000, 0, 2)
    struct.pack_into("<QQQ", sb, 128, 2048, 100_000, 8)
    total = sum(struct.unpack_from("<64I", sb))
    struct.pack_into("<I", sb, 216, ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF)
    _put(path, 4096, bytes(sb))


def _luks(path: Path) -> None:
    _put(path, 0, b"LUKS\xba\xbe\x00\x02" + bytes(8))


def _ambiguous(path: Path) -> None:
    _mkfs_ext4(path)
    _put(path, 32768, b"\x01CD001\x01\x00" + b"LINUX".ljust(32) + b"VOLID".ljust(32))


#: name → (how to plant it, fs type NodeStage asks for)
SIGNATURES: dict[str, tuple[Callable[[Path], None], str]] = {
    "ext4 (xfs asked)": (_mkfs_ext4, "xfs"),
    "swap": (_mkswap, "ext4"),
    "gpt partition table": (_sfdisk("gpt"), "ext4"),
    "dos partition table": (_sfdisk("dos"), "ext4"),
    "lvm physical volume": (_lvm, "ext4"),
    "md raid v1.2": (_md_raid, "ext4"),
    "luks2": (_luks, "ext4"),
    "ambiguous (ext4 + iso9660)": (_ambiguous, "ext4"),
}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def _warnings_naming(node: ScratchNode, volume_id: str) -> list[str]:
    found = []
    for line in log_lines(node):
        try:
            record = json.loads(line)["record"]
        except (ValueError, KeyError):
            continue
        if record["level"]["no"] >= 30 and "refusing to format" in record["message"] \
                and record["extra"].get("volume_id") == volume_id:
            found.append(record["message"])
    return found


async def logged_refusal(node: ScratchNode, volume_id: str, within: float = 10.0) -> list[str]:
    """The refusal's WARNING lines, waiting a little: the driver may answer before its log line is written."""
    deadline = time.monotonic() + within
    while True:
        found = await anyio.to_thread.run_sync(_warnings_naming, node, volume_id)
        if found or time.monotonic() > deadline:
            return found
        await anyio.sleep(0.2)


async def stage(node: ScratchNode, volume_id: str, tag: str, fs_type: str) -> tuple[str, str, Path]:
    staging = node.kubelet_dir / "plugins" / tag / "globalmount"
    await anyio.Path(staging).mkdir(parents=True, exist_ok=True)
    try:
        await node.driver.client().node.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), volume_capability=mount_cap(fs_type)), timeout=60)
    except GRPCError as exc:
        return exc.status.name, exc.message or "", staging
    return "OK", "", staging


async def run() -> PhaseResult:
    result = PhaseResult("signatures")
    refused = 0
    async with scratch_node("sig", 1024 * MIB) as node:
        stubs = node.driver.client()
        for index, (name, (plant, fs_type)) in enumerate(SIGNATURES.items()):
            created = await stubs.controller.create_volume(csi.CreateVolumeRequest(
                name=f"sig-{index}", capacity_range=csi.CapacityRange(required_bytes=VOLUME_BYTES),
                volume_capabilities=[mount_cap("ext4")], parameters=THIN))
            assert created.volume is not None
            volume_id = created.volume.volume_id
            image = node.image(volume_id)
            await anyio.to_thread.run_sync(plant, image)
            before = await anyio.to_thread.run_sync(_digest, image)
            code, message, staging = await stage(node, volume_id, f"sig-{index}", fs_type)
            after = await anyio.to_thread.run_sync(_digest, image)
            result.check(code == "FAILED_PRECONDITION", f"{name}: NodeStage answered {code} ({message})")
            result.check(before == after, f"{name}: the image changed: DATA WAS OVERWRITTEN")
            result.check(leaks.mount_count(staging) == 0, f"{name}: the refused stage left a mount")
            result.check(not [i for i in leaks.loops_backed_under(node.data_dir) if i.backing_file == str(image)],
                         f"{name}: the refused stage left the loop device attached")
            logged = await logged_refusal(node, volume_id)
            result.check(bool(logged), f"{name}: no WARNING log line says the device was refused")
            refused += code == "FAILED_PRECONDITION" and before == after
            result.figures[name] = message[:160]
        created = await stubs.controller.create_volume(csi.CreateVolumeRequest(
            name="sig-blank", capacity_range=csi.CapacityRange(required_bytes=VOLUME_BYTES),
            volume_capabilities=[mount_cap("ext4")], parameters=THIN))
        assert created.volume is not None
        code, message, staging = await stage(node, created.volume.volume_id, "blank", "ext4")
        result.check(code == "OK", f"control: a blank volume was not formatted and staged: {code} {message}")
        await stubs.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(
            volume_id=created.volume.volume_id, staging_target_path=str(staging)))
    result.figures["signatures_refused_untouched"] = f"{refused}/{len(SIGNATURES)}"
    return result
