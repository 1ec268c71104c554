"""LVM running out of room, through the driver (kernel lane: real device-mapper thin pools).

Each test makes its own small volume group (one sparse PV in the guest's tmpfs) so
that filling it costs little memory, runs ``localcsi serve --backend lvm`` on it and
checks what users depend on:

* a thin pool filled by a writer of an overprovisioned volume: the writer gets an
  I/O error once the pool's ``no_space_timeout`` has passed (LVM's default
  ``--errorwhenfull n`` queues writes first; the driver does not change the pool's
  policy), CreateVolume answers RESOURCE_EXHAUSTED and leaves no LV, every volume
  of the pool reports an abnormal condition (NodeGetVolumeStats, ControllerGetVolume,
  ListVolumes), and once the operator extends the pool another volume's data reads
  back intact from the device and the conditions return to normal;
* the VG out of extents: thick CreateVolume and ControllerExpandVolume answer
  RESOURCE_EXHAUSTED without leaving an LV or changing a size, and deleting a
  volume makes room again.

``LOCALCSI_VMTEST=1`` (the lane) turns a missing device-mapper into a failure.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from backends.system.lvm import LV_FIELDS
from csi.gen.csi import v1 as csi
from e2e.leaks import volume_lvs
from tests.kernel.lvmdriver import lvm_driver
from tests.kernel.lvmtools import VolumeGroup, sh
from tests.kernel.test_lvm_driver import LvmLifecycle
from tests.lifecycle import expect
from tests.support import MIB, Client, DriverProcess, assert_no_leaks, connect, create_request, mount_cap, sparse_file

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(900)]

PV_BYTES = 512 * MIB
POOL_BYTES = 64 * MIB
NO_SPACE_TIMEOUT = Path("/sys/module/dm_thin_pool/parameters/no_space_timeout")
#: Seconds dm-thin queues writes to a full pool before failing them (60 by default; shortened here).
QUEUE_SECONDS = 5


@contextlib.contextmanager
def small_vg() -> Iterator[VolumeGroup]:
    """A VG on one sparse 512 MiB loop PV with a 64 MiB thin pool (LVM's defaults otherwise)."""
    with sparse_file("lvm-exhaust-", PV_BYTES) as image:
        loop = sh("losetup", "--find", "--show", str(image)).strip()
        name = f"lcsx{uuid.uuid4().hex[:8]}"
        try:
            sh("pvcreate", "-q", loop)
            sh("vgcreate", "-q", name, loop)
            sh("lvcreate", "-q", "--type", "thin-pool", "-L", f"{POOL_BYTES}b", "-n", "pool", name)
            yield VolumeGroup(name, "pool", (loop,))
        finally:
            subprocess.run(["vgremove", "-q", "-f", name], capture_output=True, check=False, timeout=120)
            subprocess.run(["pvremove", "-q", "-f", loop], capture_output=True, check=False, timeout=60)
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False, timeout=60)


@contextlib.contextmanager
def queue_timeout(seconds: int) -> Iterator[int]:
    """Shorten dm-thin's queueing of writes to a full pool; yields the previous value (restored after)."""
    before = int(NO_SPACE_TIMEOUT.read_text())
    NO_SPACE_TIMEOUT.write_text(str(seconds))
    try:
        yield before
    finally:
        NO_SPACE_TIMEOUT.write_text(str(before))


@contextlib.contextmanager
def driver_on(vg: VolumeGroup, overprovision: float) -> Iterator[DriverProcess]:
    proc = lvm_driver(Path(tempfile.mkdtemp(prefix="lvm-exhaust-driver-")), vg, thin=True,
                      overprovision=overprovision)
    with proc.running(timeout=120):
        yield proc


def pool_row(vg: VolumeGroup) -> dict[str, str]:
    out = sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
             "-o", "lv_name,lv_attr,data_percent,lv_health_status,lv_when_full,lv_size", f"{vg.name}/{vg.thinpool}")
    row: dict[str, str] = json.loads(out)["report"][0]["lv"][0]
    return row


def save_report(vg: VolumeGroup, name: str) -> None:
    """Keep LVM's report of this state for the host-side unit tests (``VMTEST_OUT_DIR`` copies it out)."""
    out = os.environ.get("VMTEST_OUT")
    if not out:
        return
    report = sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", ",".join(LV_FIELDS), vg.name)
    target = Path(out) / "lvm-exhaustion"
    target.mkdir(parents=True, exist_ok=True)
    (target / name).write_text(report)


def fill(path: Path, limit: int) -> tuple[int, int, float]:
    """Write fsynced 1 MiB chunks until an error: (bytes acknowledged, errno, seconds the failing call took)."""
    chunk = os.urandom(MIB)
    written = 0
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        while written < limit:
            started = time.monotonic()
            try:
                os.write(fd, chunk)
                os.fsync(fd)
            except OSError as exc:
                return written, exc.errno or 0, time.monotonic() - started
            written += MIB
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return written, 0, 0.0


async def conditions(c: Client, vol: LvmLifecycle) -> dict[str, csi.VolumeCondition | None]:
    stats = await c.node.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(
        volume_id=vol.volume_id, volume_path=str(vol.target)))
    got = await c.controller.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=vol.volume_id))
    listed = await c.controller.list_volumes(csi.ListVolumesRequest())
    entry = next(e for e in listed.entries if e.volume is not None and e.volume.volume_id == vol.volume_id)
    return {
        "NodeGetVolumeStats": stats.volume_condition,
        "ControllerGetVolume": got.status.volume_condition if got.status else None,
        "ListVolumes": entry.status.volume_condition if entry.status else None,
    }


async def test_a_full_thin_pool_fails_writes_refuses_volumes_and_spares_other_volumes() -> None:
    with small_vg() as vg, driver_on(vg, overprovision=8.0) as driver, queue_timeout(QUEUE_SECONDS):
        assert pool_row(vg)["lv_when_full"] in ("", "queue"), "LVM's default policy queues writes to a full pool"
        async with connect(driver.socket_path) as c:
            keeper = LvmLifecycle(c, driver, "pvc-keeper", mount_cap("ext4"), 32 * MIB, "thin")
            await keeper.up()
            kept = os.urandom(4 * MIB)
            keeper.write(kept)
            filler = LvmLifecycle(c, driver, "pvc-filler", mount_cap("ext4"), 4 * POOL_BYTES, "thin")
            await filler.up()  # four times the pool: allowed by the overprovisioning ratio
            assert all(not cond.abnormal for cond in (await conditions(c, keeper)).values() if cond)

            started = time.monotonic()
            with anyio.fail_after(300):
                written, error, stalled = await anyio.to_thread.run_sync(
                    fill, filler.target / "fill.bin", 4 * POOL_BYTES)
            took = time.monotonic() - started
            assert error == errno.EIO, f"the writer saw {errno.errorcode.get(error, error)} after {written} bytes"
            assert written < POOL_BYTES, "more was acknowledged than the pool can hold"
            assert stalled >= QUEUE_SECONDS - 1, "the full pool queued the write before failing it"
            pool = pool_row(vg)
            assert float(pool["data_percent"]) >= 100.0 and pool["lv_health_status"] == "out_of_data", pool
            save_report(vg, "lvs-pool-full.json")
            print(f"filler: {written // MIB} MiB acknowledged, EIO after {stalled:.1f} s queued ({took:.1f} s), "
                  f"pool {pool}")

            # The driver says so everywhere a CO or the health monitor looks.
            for rpc, cond in (await conditions(c, keeper)).items():
                assert cond is not None and cond.abnormal, f"{rpc} reports the volume of a full pool as healthy"
                assert "out" in cond.message and vg.thinpool in cond.message, f"{rpc}: {cond.message}"
            # No new volume in a full pool, even though the overprovisioning budget has room, and no LV left.
            before = set(volume_lvs(vg.name))
            error_reply = await expect(Status.RESOURCE_EXHAUSTED, c.controller.create_volume(
                create_request("pvc-when-full", 8 * MIB, mount_cap(), {"lvm.localcsi.dev/type": "thin"})))
            assert vg.thinpool in (error_reply.message or "")
            assert set(volume_lvs(vg.name)) == before
            assert (await c.identity.probe(csi.ProbeRequest())) is not None

            # The operator grows the pool: writes resume, the keeper's data is intact on the device.
            sh("lvextend", "-q", "-L", f"+{4 * POOL_BYTES}b", f"{vg.name}/{vg.thinpool}")
            assert float(pool_row(vg)["data_percent"]) < 100.0
            assert all(not cond.abnormal for cond in (await conditions(c, keeper)).values() if cond)
            await keeper.unpublish()
            await keeper.unstage()  # deactivates the LV: the next read comes from the pool, not a cache
            await keeper.stage()
            await keeper.publish()
            assert hashlib.sha256(keeper.read(len(kept))).digest() == hashlib.sha256(kept).digest()
            keeper.write(kept[::-1])
            assert keeper.read(len(kept)) == kept[::-1]
            fresh = await c.controller.create_volume(
                create_request("pvc-after", 8 * MIB, mount_cap(), {"lvm.localcsi.dev/type": "thin"}))
            assert fresh.volume is not None
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=fresh.volume.volume_id))
            await filler.down()
            await keeper.down()
        assert_no_leaks(driver)


async def test_a_full_volume_group_refuses_thick_volumes_and_growth_without_leftovers() -> None:
    with small_vg() as vg, driver_on(vg, overprovision=1.0) as driver:
        async with connect(driver.socket_path) as c:
            keeper = LvmLifecycle(c, driver, "pvc-thick-keeper", mount_cap("ext4"), 64 * MIB, "thick")
            await keeper.up()
            kept = os.urandom(MIB)
            keeper.write(kept)
            made: list[str] = []
            refused = ""
            for index in range(20):  # 128 MiB each until LVM has no extents left
                name = f"pvc-thick-{index}"
                try:
                    resp = await c.controller.create_volume(
                        create_request(name, 128 * MIB, mount_cap(), {"lvm.localcsi.dev/type": "thick"}))
                except GRPCError as exc:
                    assert exc.status == Status.RESOURCE_EXHAUSTED, exc.message
                    refused = name
                    break
                assert resp.volume is not None
                made.append(resp.volume.volume_id)
            assert refused, "the volume group never ran out of extents"
            assert made, "not even one 128 MiB volume fitted"
            capacity = await c.controller.get_capacity(csi.GetCapacityRequest(
                volume_capabilities=[mount_cap()], parameters={"lvm.localcsi.dev/type": "thick"}))
            assert capacity.available_capacity < 128 * MIB
            names = set(volume_lvs(vg.name))
            assert len(names) == len(made) + 1, "the refused volume left an LV behind"
            # Growing a thick volume past the free extents: refused, size unchanged.
            await expect(Status.RESOURCE_EXHAUSTED, c.controller.controller_expand_volume(
                csi.ControllerExpandVolumeRequest(
                    volume_id=keeper.volume_id, capacity_range=csi.CapacityRange(required_bytes=512 * MIB),
                    volume_capability=keeper.cap)))
            assert int(volume_lvs(vg.name)[keeper.volume_id]["lv_size"]) == 64 * MIB
            assert keeper.read(len(kept)) == kept
            keeper.write(kept[::-1])
            # Deleting one makes room again: the refused name now succeeds.
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=made.pop()))
            retry = await c.controller.create_volume(create_request(
                refused, 128 * MIB, mount_cap(), {"lvm.localcsi.dev/type": "thick"}))
            assert retry.volume is not None
            made.append(retry.volume.volume_id)
            for volume_id in made:
                await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
            await keeper.down()
        assert_no_leaks(driver)
