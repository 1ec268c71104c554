"""Storage pools (backends/pools.py) through a real ``localcsi serve --config``: two loopfile pools and one whose
storage is missing, one driver.

What users depend on: the StorageClass's ``localcsi.dev/pool`` puts a volume in that pool and nowhere else; every
later call finds the pool from the id alone, across a restart; each pool reports its own capacity; a pool that
cannot start answers UNAVAILABLE naming itself while the others serve; copies never cross pools; and a mistake
(an unknown pool) is INVALID_ARGUMENT before anything is made.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.const import Status

from backends.pools import POOL_PARAMETER
from csi.gen.csi import v1 as csi
from e2e import leaks
from tests.lifecycle import Lifecycle, expect, from_volume
from tests.support import LOCALCSI, MIB, DriverProcess, assert_no_leaks, connect, create_request, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]

POOLS_FILE = """\
default: bulk
pools:
  fast:
    backend: loopfile
    directory: {root}/fast
  bulk:
    backend: loopfile
    directory: {root}/bulk
    overcommit: 2.0
  broken:
    backend: lvm
    vg: localcsi-test-no-such-vg
"""


@dataclass
class PoolsDriver(DriverProcess):
    """A driver whose storage is a pools file (``--config``) instead of one backend's flags."""

    def argv(self) -> list[str]:
        config = self.root / "pools.yaml"
        config.write_text(POOLS_FILE.format(root=self.data_dir))
        return [*LOCALCSI, "serve", "--endpoint", self.endpoint, "--node-id", self.node_id, "--config", str(config),
                "--kubelet-dir", str(self.kubelet_dir), "--log-level", "DEBUG", "--log-format", "json"]


@pytest.fixture
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    with PoolsDriver(tmp_path_factory.mktemp("pools")).running() as proc:
        yield proc


def in_pool(pool: str) -> dict[str, str]:
    return {POOL_PARAMETER: pool}


def images(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.img"))


async def test_a_volume_lives_in_its_pool_and_every_call_finds_it_there(driver: DriverProcess) -> None:
    fast, bulk = driver.data_dir / "fast", driver.data_dir / "bulk"
    async with connect(driver.socket_path) as c:
        made = (await c.controller.create_volume(create_request("pvc-fast", 64 * MIB, parameters=in_pool("fast"))))
        plain = (await c.controller.create_volume(create_request("pvc-plain", 64 * MIB)))
        assert made.volume is not None and plain.volume is not None
        fast_id, bulk_id = made.volume.volume_id, plain.volume.volume_id
        assert fast_id.endswith("@fast") and bulk_id.endswith("@bulk")  # no parameter: the default pool
        assert images(fast) == [fast_id.split("@")[0] + ".img"] and images(bulk) == [bulk_id.split("@")[0] + ".img"]
        # The same name again in its pool is the same volume; the parameter is the pool's, not the backend's.
        again = await c.controller.create_volume(create_request("pvc-fast", 64 * MIB, parameters=in_pool("fast")))
        assert again.volume is not None and again.volume.volume_id == fast_id

        vol = Lifecycle(c, driver, "pvc-fast", mount_cap())
        vol.volume_id = fast_id
        await vol.use()
        vol.write()
        assert vol.read() == vol.read() and len(vol.read()) > 0
        await vol.release()

        listed = await c.controller.list_volumes(csi.ListVolumesRequest())
        assert sorted(e.volume.volume_id for e in listed.entries if e.volume) == sorted([fast_id, bulk_id])
    driver.restart()
    async with connect(driver.socket_path) as c:
        got = await c.controller.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=fast_id))
        assert got.volume is not None and got.volume.capacity_bytes == 64 * MIB
        for volume_id in (fast_id, bulk_id):
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
    assert images(fast) == images(bulk) == []
    assert_no_leaks(driver)


async def test_each_pool_reports_its_own_capacity(tmp_path: Path) -> None:
    """``fast`` on a 256 MiB filesystem of its own, ``bulk`` on the test's: each GetCapacity is its pool's."""
    proc = PoolsDriver(tmp_path)
    (proc.data_dir / "fast").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "fast", str(proc.data_dir / "fast")], check=True)
    with proc.running():  # its cleanup unmounts everything below the driver's root, the tmpfs too
        async with connect(proc.socket_path) as c:
            async def available(parameters: dict[str, str]) -> int:
                reply = await c.controller.get_capacity(csi.GetCapacityRequest(parameters=parameters))
                return reply.available_capacity

            fast, bulk, default = await available(in_pool("fast")), await available(in_pool("bulk")), await available(
                {})
            assert 0 < fast <= 256 * MIB < bulk, (fast, bulk)
            assert default == bulk  # no parameter: the default pool
            assert await available(in_pool("broken")) == 0  # a pool that is not serving offers nothing
            await expect(Status.INVALID_ARGUMENT, c.controller.get_capacity(csi.GetCapacityRequest(
                parameters=in_pool("nope"))))
            made = await c.controller.create_volume(create_request("pvc-fills", fast, parameters=in_pool("fast")))
            assert made.volume is not None
            assert await available(in_pool("fast")) < fast and await available(in_pool("bulk")) == bulk
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=made.volume.volume_id))


async def test_a_pool_that_cannot_start_answers_for_itself_and_the_rest_serve(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        probe = await c.identity.probe(csi.ProbeRequest())
        assert probe.ready is not False
        refused = await expect(Status.UNAVAILABLE, c.controller.create_volume(
            create_request("pvc-broken", 64 * MIB, parameters=in_pool("broken"))))
        assert "broken" in (refused.message or "")
        unknown = await expect(Status.INVALID_ARGUMENT, c.controller.create_volume(
            create_request("pvc-nowhere", 64 * MIB, parameters=in_pool("nope"))))
        assert "nope" in (unknown.message or "")
        made = await c.controller.create_volume(create_request("pvc-ok", 64 * MIB, parameters=in_pool("fast")))
        assert made.volume is not None
        await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=made.volume.volume_id))
    assert not leaks.loops_backed_under(driver.data_dir)


async def test_copies_stay_in_their_pool(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        source = await c.controller.create_volume(create_request("pvc-src", 64 * MIB, parameters=in_pool("fast")))
        assert source.volume is not None
        request = create_request("pvc-copy", 64 * MIB, parameters=in_pool("bulk"))
        request.volume_content_source = from_volume(source.volume.volume_id)
        crossed = await expect(Status.INVALID_ARGUMENT, c.controller.create_volume(request))
        assert "fast" in (crossed.message or "") and "bulk" in (crossed.message or "")
        assert images(driver.data_dir / "bulk") == []
        snap = await c.controller.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-src", source_volume_id=source.volume.volume_id))
        assert snap.snapshot is not None and snap.snapshot.snapshot_id.endswith("@fast")
        await c.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot.snapshot_id))
        await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=source.volume.volume_id))
