"""Phase 3: the backing filesystem fills up, during CreateVolume and during writes.

``--loopfile-dir`` lives on a small ext4 filesystem this phase makes (a sparse
file, attached as a loop device, mounted). A thick volume holds checksummed
data throughout. Then:

1. a CreateVolume far larger than the filesystem: RESOURCE_EXHAUSTED, nothing left behind;
2. several CreateVolume calls in parallel that each fit alone but not together: the losers' space check
   passes and their ``fallocate`` hits ENOSPC; they must answer RESOURCE_EXHAUSTED and roll back
   (no image, no record); the winners are real volumes;
3. a thin volume (overcommit allowed) is written until its backing filesystem is full: the writer sees
   an I/O error, the driver does not care; further CreateVolume calls answer RESOURCE_EXHAUSTED;
4. throughout: the thick volume still reads back its data and takes new writes, the driver stays up,
   ListVolumes holds exactly the volumes that were acknowledged, and each record file parses.

Loop devices running out, thin pools filling and volume groups running out of
extents are the kernel phase's (``kernel.py``): this machine's loop devices are
shared with other users and its kernel has no device-mapper.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e.files import write_file
from e2e.reliability.common import MIB, THIN, PhaseResult, filesystem_node, mount_cap
from e2e.reliability.crash import check_records
from e2e.sim.driver import DriverInstance

FS_BYTES = 96 * MIB



@contextlib.asynccontextmanager
async def small_filesystem() -> AsyncIterator[tuple[Path, DriverInstance]]:
    async with filesystem_node("exhaust", "ext4", FS_BYTES, ["--loopfile-overcommit", "20"]) as node:
        yield node.root, node.driver


async def create(driver: DriverInstance, name: str, size: int, parameters: dict[str, str] | None = None
                 ) -> tuple[str, csi.Volume | None]:
    request = csi.CreateVolumeRequest(name=name, capacity_range=csi.CapacityRange(required_bytes=size),
                                      volume_capabilities=[mount_cap()], parameters=parameters or {})
    try:
        resp = await driver.client().controller.create_volume(request, timeout=60)
    except GRPCError as exc:
        if exc.status.name not in ("RESOURCE_EXHAUSTED", "OK"):
            return f"{exc.status.name} ({exc.message})", None
        return exc.status.name, None
    return "OK", resp.volume


async def publish(driver: DriverInstance, root: Path, volume_id: str, tag: str) -> Path:
    staging, target = root / "kubelet" / "staging" / tag, root / "kubelet" / "pods" / tag / "mount"
    await anyio.Path(staging).mkdir(parents=True, exist_ok=True)
    await anyio.Path(target.parent).mkdir(parents=True, exist_ok=True)
    stubs = driver.client()
    await stubs.node.node_stage_volume(csi.NodeStageVolumeRequest(
        volume_id=volume_id, staging_target_path=str(staging), volume_capability=mount_cap()), timeout=60)
    await stubs.node.node_publish_volume(csi.NodePublishVolumeRequest(
        volume_id=volume_id, staging_target_path=str(staging), target_path=str(target), volume_capability=mount_cap()),
        timeout=60)
    return target


def fill(path: Path, limit: int) -> tuple[int, str]:
    """Write 1 MiB chunks (fsynced) until an error; returns (bytes written, errno name)."""
    written = 0
    chunk = os.urandom(MIB)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        while written < limit:
            os.write(fd, chunk)
            os.fsync(fd)
            written += MIB
    except OSError as exc:
        return written, errno.errorcode.get(exc.errno or 0, str(exc.errno))
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return written, ""


async def still_works(path: Path, expected: dict[str, str], result: PhaseResult, when: str) -> None:
    for name, digest in expected.items():
        data = await anyio.Path(path / name).read_bytes()
        result.check(hashlib.sha256(data).hexdigest() == digest, f"{when}: {name} on the thick volume changed")
    fresh = os.urandom(256 * 1024)
    try:
        await anyio.to_thread.run_sync(write_file, path / f"after-{len(expected)}.bin", fresh)
        expected[f"after-{len(expected)}.bin"] = hashlib.sha256(fresh).hexdigest()
    except OSError as exc:
        result.fail(f"{when}: the thick volume no longer takes writes: {exc}")


async def delete_on_full(driver: DriverInstance, root: Path, volume_id: str, data_dir: Path,
                         result: PhaseResult) -> bool:
    stubs = driver.client()
    staging, target = root / "kubelet" / "staging" / "filler", root / "kubelet" / "pods" / "filler" / "mount"
    await stubs.node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(volume_id=volume_id,
                                                                          target_path=str(target)), timeout=60)
    await stubs.node.node_unstage_volume(csi.NodeUnstageVolumeRequest(volume_id=volume_id,
                                                                      staging_target_path=str(staging)), timeout=60)
    free_before = (await anyio.to_thread.run_sync(os.statvfs, data_dir)).f_bavail
    try:
        await stubs.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id), timeout=60)
    except GRPCError as exc:
        result.fail(f"DeleteVolume on a full filesystem answered {exc.status.name}: {exc.message}")
        return False
    free_after = (await anyio.to_thread.run_sync(os.statvfs, data_dir)).f_bavail
    result.check(free_after > free_before, "deleting the thin volume freed no space")
    return True


async def listed(driver: DriverInstance) -> set[str]:
    resp = await driver.client().controller.list_volumes(csi.ListVolumesRequest(), timeout=30)
    return {e.volume.volume_id for e in resp.entries if e.volume is not None}


async def run() -> PhaseResult:
    result = PhaseResult("exhaustion")
    codes: Counter[str] = Counter()
    async with small_filesystem() as (root, driver):
        data_dir = root / "fs" / "volumes"
        code, thick = await create(driver, "thick-keeper", 24 * MIB)
        result.check(code == "OK" and thick is not None, f"setup CreateVolume answered {code}")
        assert thick is not None
        keeper = await publish(driver, root, thick.volume_id, "keeper")
        first = os.urandom(MIB)
        await anyio.to_thread.run_sync(write_file, keeper / "first.bin", first)
        expected = {"first.bin": hashlib.sha256(first).hexdigest()}
        acknowledged = {thick.volume_id}

        code, _ = await create(driver, "far-too-big", 10 * FS_BYTES)
        codes[code] += 1
        result.check(code == "RESOURCE_EXHAUSTED", f"oversized CreateVolume answered {code}")

        fs = await anyio.to_thread.run_sync(os.statvfs, data_dir)
        free = fs.f_bavail * fs.f_frsize
        each = (free * 45 // 100) // MIB * MIB
        outcomes: dict[str, tuple[str, csi.Volume | None]] = {}

        async def racer(index: int) -> None:
            outcomes[f"race-{index}"] = await create(driver, f"race-{index}", each)

        async with anyio.create_task_group() as tg:
            for index in range(4):
                tg.start_soon(racer, index)
        for name, (code, volume) in outcomes.items():
            codes[code] += 1
            result.check(code in ("OK", "RESOURCE_EXHAUSTED"), f"racing CreateVolume {name} answered {code}")
            if volume is not None:
                acknowledged.add(volume.volume_id)
        result.check(any(c == "RESOURCE_EXHAUSTED" for c, _ in outcomes.values()),
                     "four creates of 45% of the free space each all succeeded")
        await still_works(keeper, expected, result, "after the racing creates")
        for volume_id in [v.volume_id for _, v in outcomes.values() if v is not None]:
            await driver.client().controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id), timeout=60)
            acknowledged.discard(volume_id)

        code, thin = await create(driver, "thin-filler", 4 * FS_BYTES // MIB * MIB, THIN)
        codes[code] += 1
        result.check(code == "OK" and thin is not None, f"overcommitted thin CreateVolume answered {code}")
        filled_bytes, filled_error = 0, ""
        if thin is not None:
            acknowledged.add(thin.volume_id)
            filler = await publish(driver, root, thin.volume_id, "filler")
            filled_bytes, filled_error = await anyio.to_thread.run_sync(fill, filler / "fill.bin", 4 * FS_BYTES)
            result.check(bool(filled_error), "writing the thin volume never hit the full backing filesystem")
        await still_works(keeper, expected, result, "after the backing filesystem filled up")
        for name, params in (("when-full-thick", {}), ("when-full-thin", THIN)):
            code, volume = await create(driver, name, 16 * MIB, params)
            codes[code] += 1
            result.check(code == "RESOURCE_EXHAUSTED", f"CreateVolume {name} on a full filesystem answered {code}")
            if volume is not None:
                acknowledged.add(volume.volume_id)
        result.check(driver.alive, "driver died while the filesystem was full")
        if thin is not None:  # cleaning up must work on a full filesystem: deleting frees the space
            freed = await delete_on_full(driver, root, thin.volume_id, data_dir, result)
            if freed:
                acknowledged.discard(thin.volume_id)
        result.check(await listed(driver) == acknowledged,
                     f"ListVolumes {sorted(await listed(driver))} != acknowledged {sorted(acknowledged)}")
        images = {p.name.removesuffix(".img") for p in data_dir.glob("*.img")}
        result.check(images == acknowledged, f"images on disk {sorted(images)} != acknowledged {sorted(acknowledged)}")
        for problem in await anyio.to_thread.run_sync(check_records, data_dir):
            result.fail(problem)
        await still_works(keeper, expected, result, "at the end")
        log = driver.log_tail(10_000_000)
        result.figures.update({
            "refused_by_space_check": log.count("not enough space:"),
            "refused_by_fallocate_enospc_and_rolled_back": log.count("no room for"),
            "filesystem_bytes": FS_BYTES, "racing_create_size_bytes": each, "codes": dict(codes),
            "thin_bytes_written_before_full": filled_bytes, "writer_error": filled_error,
            "keeper_files_verified": len(expected),
        })
    return result
