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
from tests.backends.rawdisk.support import FakeDisks, fake_disks
from tests.csi.test_metrics import free_port, scrape, value
from tests.lifecycle import PAYLOAD, Lifecycle, expect, from_volume
from tests.support import LOCALCSI, MIB, DriverProcess, assert_no_leaks, connect, create_request, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]
disks = pytest.fixture(fake_disks, name="disks")

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

    #: The pools file, ``{root}`` standing for the data directory.
    pools_file: str = POOLS_FILE
    #: More pools, in the file's YAML (indented as the pools above).
    extra_pools: str = ""

    def argv(self) -> list[str]:
        config = self.root / "pools.yaml"
        config.write_text(self.pools_file.format(root=self.data_dir) + self.extra_pools)
        return [*LOCALCSI, "serve", "--endpoint", self.endpoint, "--node-id", self.node_id, "--config", str(config),
                "--kubelet-dir", str(self.kubelet_dir), "--log-level", "DEBUG", "--log-format", "json",
                *self.extra_args]


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
        # No parameter: the default pool, whose ids carry no pool (as every id did before pools).
        assert fast_id.endswith("@fast") and "@" not in bulk_id
        assert images(fast) == [fast_id.split("@")[0] + ".img"] and images(bulk) == [bulk_id.split("@")[0] + ".img"]
        # The same name again in its pool is the same volume; the parameter is the pool's, not the backend's.
        again = await c.controller.create_volume(create_request("pvc-fast", 64 * MIB, parameters=in_pool("fast")))
        assert again.volume is not None and again.volume.volume_id == fast_id

        vol = Lifecycle(c, driver, "pvc-fast", mount_cap())
        vol.volume_id = fast_id
        await vol.use()
        vol.write()
        await vol.release()
        await vol.use()  # staged again through the pooled id: the data is the pool's volume's
        assert vol.read() == PAYLOAD
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
        elsewhere = await expect(Status.INVALID_ARGUMENT, c.controller.create_snapshot(csi.CreateSnapshotRequest(
            name="snap-src", source_volume_id=source.volume.volume_id, parameters=in_pool("bulk"))))
        assert "'fast'" in (elsewhere.message or "") and "'bulk'" in (elsewhere.message or "")
        snap = await c.controller.create_snapshot(csi.CreateSnapshotRequest(  # naming its own pool is fine
            name="snap-src", source_volume_id=source.volume.volume_id, parameters=in_pool("fast")))
        assert snap.snapshot is not None and snap.snapshot.snapshot_id.endswith("@fast")
        await c.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot.snapshot_id))
        await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=source.volume.volume_id))


async def test_a_pool_whose_storage_goes_away_fails_clearly_and_the_others_serve(tmp_path: Path,
                                                                                 disks: FakeDisks) -> None:
    """``fast``'s filesystem is unmounted under the running driver: its calls answer UNAVAILABLE naming the pool
    and the cause, nothing is written to the directory left behind, its capacity is 0; ``bulk`` and a rawdisk pool
    keep serving."""
    disks.add("disk-0", 96 * MIB)
    proc = PoolsDriver(tmp_path, extra_pools=f"  disks:\n    backend: rawdisk\n    devices: [{disks.pattern!r}]\n")
    fast = proc.data_dir / "fast"
    fast.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "fast", str(fast)], check=True)
    with proc.running():
        async with connect(proc.socket_path) as c:
            kept = await c.controller.create_volume(create_request("pvc-kept", 64 * MIB, parameters=in_pool("fast")))
            on_disk = await c.controller.create_volume(create_request("pvc-disk", 64 * MIB,
                                                                      parameters=in_pool("disks")))
            assert kept.volume is not None and on_disk.volume is not None
            assert on_disk.volume.volume_id.endswith("@disks")
            subprocess.run(["umount", "-l", str(fast)], check=True)

            refused = await expect(Status.UNAVAILABLE, c.controller.create_volume(
                create_request("pvc-lost", 64 * MIB, parameters=in_pool("fast"))))
            assert "fast" in (refused.message or "") and "unmounted or replaced" in (refused.message or "")
            assert images(fast) == [], "a volume was written to the directory the filesystem left behind"
            reply = await c.controller.get_capacity(csi.GetCapacityRequest(parameters=in_pool("fast")))
            assert reply.available_capacity == 0
            assert (await c.identity.probe(csi.ProbeRequest())).ready is not False
            made = await c.controller.create_volume(create_request("pvc-ok", 64 * MIB, parameters=in_pool("bulk")))
            assert made.volume is not None
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=made.volume.volume_id))
            listed = await c.controller.list_volumes(csi.ListVolumesRequest())
            assert on_disk.volume.volume_id in {e.volume.volume_id for e in listed.entries if e.volume}
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=on_disk.volume.volume_id))


async def test_metrics_say_each_pools_figures_and_which_pool_is_down(tmp_path: Path) -> None:
    port = free_port()
    with PoolsDriver(tmp_path, extra_args=("--metrics-address", f"127.0.0.1:{port}")).running() as proc:
        async with connect(proc.socket_path) as c:
            made = await c.controller.create_volume(create_request("pvc-metered", 64 * MIB, parameters=in_pool("fast")))
            assert made.volume is not None
            samples = await scrape(f"http://127.0.0.1:{port}")
            assert value(samples, "localcsi_backend_up") == 1  # two of three pools serve
            assert {pool: value(samples, "localcsi_pool_up", pool=pool) for pool in ("fast", "bulk", "broken")} == {
                "fast": 1, "bulk": 1, "broken": 0}
            assert value(samples, "localcsi_volumes", pool="fast", condition="healthy") == 1
            assert value(samples, "localcsi_volumes", pool="bulk", condition="healthy") == 0
            assert value(samples, "localcsi_volumes_provisioned_bytes", pool="fast") == 64 * MIB
            assert value(samples, "localcsi_capacity_available_bytes", pool="bulk") > 0
            assert ("localcsi_volumes", frozenset({("pool", "broken"), ("condition", "healthy")})) not in samples
            await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=made.volume.volume_id))


async def test_volumes_of_a_driver_configured_by_flags_keep_working_under_a_pools_file(tmp_path: Path) -> None:
    """The upgrade path: volumes made by a driver configured by flags (ids without a pool, the only kind before
    pools existed) are the default pool's once the same directory is a pool of a pools file; their data stays,
    every call still finds them, and new volumes get qualified ids."""
    flags = DriverProcess(tmp_path)  # the data directory is tmp_path/volumes
    with flags.running():
        async with connect(flags.socket_path) as c:
            old = Lifecycle(c, flags, "pvc-before", mount_cap())
            await old.create()
            await old.use()
            old.write()
            before = old.read()
            await old.release()
    assert "@" not in old.volume_id
    # The same directory, now the one pool of a pools file.
    one_pool = "default: here\npools:\n  here:\n    backend: loopfile\n    directory: {root}\n"
    proc = PoolsDriver(tmp_path, pools_file=one_pool)
    with proc.running():
        async with connect(proc.socket_path) as c:
            listed = await c.controller.list_volumes(csi.ListVolumesRequest())
            assert [e.volume.volume_id for e in listed.entries if e.volume] == [old.volume_id]
            again = Lifecycle(c, proc, "pvc-before", mount_cap())
            again.volume_id = old.volume_id
            await again.use()
            assert again.read() == before
            await again.release()
            new = await c.controller.create_volume(create_request("pvc-after", 64 * MIB))
            assert new.volume is not None and "@" not in new.volume.volume_id  # the default pool's ids stay plain
            qualified = await c.controller.controller_get_volume(csi.ControllerGetVolumeRequest(
                volume_id=old.volume_id + "@here"))  # an id naming the default pool is accepted too
            assert qualified.volume is not None and qualified.volume.volume_id == old.volume_id
            for volume_id in (old.volume_id, new.volume.volume_id):
                await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=volume_id))
    assert images(proc.data_dir) == []
