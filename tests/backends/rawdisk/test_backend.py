"""The rawdisk backend against real loop devices standing in for disks (see rawdisk_support)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from backends import errors
from backends.base import AccessType, VolumeSpec
from backends.rawdisk import claim as rawdisk_claim
from backends.rawdisk.backend import RawdiskBackend
from backends.rawdisk.claim import PARTITION_TYPE
from backends.rawdisk.inventory import State
from tests.backends.rawdisk.support import MIB, NODE, FakeDisks, fake_disks, make_ext4, running, sh, write_foreign_gpt

pytestmark = [pytest.mark.anyio, pytest.mark.root]


disks = pytest.fixture(fake_disks, name="disks")


def spec(name: str, required: int = 0, limit: int = 0, fs_type: str = "ext4") -> VolumeSpec:
    access = AccessType.MOUNT if fs_type else AccessType.BLOCK
    return VolumeSpec(name, required, limit, {}, access, fs_type)


def states(backend: RawdiskBackend) -> dict[str, tuple[State, str]]:
    return {os.path.basename(d.path).removeprefix("disk-"): (d.state, d.reason) for d in backend.inventory()}


def partition_table(device: str) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(sh("sfdisk", "--json", device))["partitiontable"]
    return table


async def test_discovery_explains_every_exclusion(disks: FakeDisks) -> None:
    disks.add("blank", 128 * MIB)
    disks.add("ext4", 128 * MIB, prepare=make_ext4)
    disks.add("gpt", 128 * MIB, prepare=write_foreign_gpt)
    mounted = disks.add("mounted", 128 * MIB, prepare=make_ext4)
    point = disks.root / "mnt"
    point.mkdir()
    sh("mount", mounted, str(point))
    disks.add("tiny", 8 * MIB)
    disks.add("readonly", 128 * MIB, readonly=True)
    (disks.root / "file").write_text("not a disk")
    os.symlink(disks.root / "file", disks.link("file"))
    view = sh("losetup", "--find", "--show", "--offset", str(MIB), disks.devices["blank"]).strip()
    os.symlink(view, disks.link("view"))
    try:
        async with running(disks) as backend:
            found = states(backend)
    finally:
        os.unlink(disks.link("view"))
        sh("losetup", "-d", view)
    assert found["blank"] == (State.FREE, "blank and eligible")
    assert found["ext4"][0] is State.EXCLUDED and "carries ext4 (filesystem)" in found["ext4"][1]
    assert found["gpt"][0] is State.EXCLUDED and "GPT partition table that localcsi did not write" in found["gpt"][1]
    assert found["mounted"] == (State.EXCLUDED, f"is mounted at {point}")
    assert found["tiny"][0] is State.EXCLUDED and found["tiny"][1].startswith("is too small")
    assert found["readonly"] == (State.EXCLUDED, "is read-only")
    assert found["file"] == (State.EXCLUDED, "is not a block device")
    assert found["view"][0] is State.EXCLUDED and "partition view" in found["view"][1]


async def test_best_fit_claim_capacity_and_idempotency(disks: FakeDisks) -> None:
    for name, size in (("m", 256 * MIB), ("s", 128 * MIB), ("l", 512 * MIB)):
        disks.add(name, size)
    async with running(disks) as backend:
        capacity = await backend.get_capacity({})
        assert capacity.available_bytes == (126 + 254 + 510) * MIB
        assert capacity.maximum_volume_bytes == 510 * MIB

        small = await backend.create_volume(spec("pvc-small", 100 * MIB))
        assert small.capacity_bytes == 126 * MIB  # the partition of the 128 MiB disk, not the request
        assert small.context["localcsi.dev/disk"] == disks.link("s")
        table = partition_table(disks.devices["s"])
        [part] = table["partitions"]
        assert part["type"].lower() == str(PARTITION_TYPE)
        assert part["name"] == small.volume_id
        assert part["start"] * 512 == MIB and part["size"] * 512 == small.capacity_bytes

        assert await backend.create_volume(spec("pvc-small", 100 * MIB)) == small
        with pytest.raises(errors.VolumeConflict):
            await backend.create_volume(spec("pvc-small", 200 * MIB))
        with pytest.raises(errors.OutOfRange):
            await backend.create_volume(spec("pvc-limited", 10 * MIB, limit=100 * MIB))
        with pytest.raises(errors.CapacityExhausted):
            await backend.create_volume(spec("pvc-huge", 1024 * MIB))

        medium = await backend.create_volume(spec("pvc-medium", 0, fs_type=""))
        assert medium.capacity_bytes == 254 * MIB
        capacity = await backend.get_capacity({})
        assert (capacity.available_bytes, capacity.maximum_volume_bytes) == (510 * MIB, 510 * MIB)
        with pytest.raises(errors.UnsupportedParameter):
            await backend.create_volume(VolumeSpec("x", 0, 0, {"bogus": "1"}))


async def test_data_lives_in_the_partition_and_survives_restart(disks: FakeDisks) -> None:
    disks.add("d1", 128 * MIB)
    disks.add("d2", 128 * MIB)
    payload = os.urandom(64 * 1024)
    async with running(disks) as backend:
        volume = await backend.create_volume(spec("pvc-data", 64 * MIB))
        other = await backend.create_volume(spec("pvc-other", 64 * MIB))
        await backend.publish_volume(volume.volume_id, NODE, readonly=False)
        device = await backend.attach(volume.volume_id, readonly=False)
        assert device.startswith("/dev/loop")  # this kernel shows no partition device: a loop view
        with open(device, "r+b") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    disk_name = next(n for n, d in disks.devices.items()
                     if volume.context["localcsi.dev/disk"] == disks.link(n))
    with open(disks.images / f"{disk_name}.img", "rb") as image:
        image.seek(MIB)
        assert image.read(len(payload)) == payload

    async with running(disks) as backend:  # a fresh driver: everything from the disks alone
        volumes = {v.volume_id: v for v in await backend.list_volumes()}
        assert set(volumes) == {volume.volume_id, other.volume_id}
        recovered = volumes[volume.volume_id]
        assert (recovered.name, recovered.capacity_bytes) == ("pvc-data", volume.capacity_bytes)
        assert recovered.published_node_ids == (NODE,)
        assert await backend.device_path(volume.volume_id) == device  # the view is found again, not re-made
        assert await backend.attach(volume.volume_id, readonly=False) == device
        with open(device, "rb") as handle:
            assert handle.read(len(payload)) == payload
        await backend.unpublish_volume(volume.volume_id, NODE)
        await backend.detach(volume.volume_id)
        assert await backend.device_path(volume.volume_id) is None
    async with running(disks) as backend:
        assert (await backend.get_volume(volume.volume_id)).published_node_ids == ()


async def test_delete_wipes_the_disk_and_returns_it_to_the_pool(disks: FakeDisks) -> None:
    disks.add("d", 128 * MIB)
    async with running(disks) as backend:
        volume = await backend.create_volume(spec("pvc-1", 64 * MIB))
        device = await backend.attach(volume.volume_id, readonly=False)
        sh("mkfs.ext4", "-q", device)
        with pytest.raises(errors.VolumeInUse):
            await backend.delete_volume(volume.volume_id)
        await backend.detach(volume.volume_id)
        await backend.delete_volume(volume.volume_id)
        await backend.delete_volume(volume.volume_id)  # absent is success
        assert states(backend)["d"] == (State.FREE, "blank and eligible")
        assert disks.head("d") == bytes(2 * MIB)
        probe = subprocess.run(["blkid", "-p", disks.devices["d"]], capture_output=True, check=False)
        assert probe.returncode == 2  # nothing at all
        with pytest.raises(errors.VolumeNotFound):
            await backend.get_volume(volume.volume_id)
        again = await backend.create_volume(spec("pvc-2", 64 * MIB))
        assert again.context["localcsi.dev/disk"] == disks.link("d")


async def test_foreign_data_is_never_touched(disks: FakeDisks) -> None:
    disks.add("ext4", 128 * MIB, prepare=make_ext4)
    disks.add("gpt", 128 * MIB, prepare=write_foreign_gpt)
    before = {name: disks.head(name) for name in ("ext4", "gpt")}
    async with running(disks) as backend:
        with pytest.raises(errors.CapacityExhausted):
            await backend.create_volume(spec("pvc-1", 16 * MIB))
        assert (await backend.get_capacity({})).available_bytes == 0
        await backend.rescan()
    assert {name: disks.head(name) for name in ("ext4", "gpt")} == before


async def test_a_disk_that_changes_after_the_scan_is_not_claimed(disks: FakeDisks) -> None:
    device = disks.add("d", 128 * MIB)
    async with running(disks) as backend:
        sh("mkfs.ext4", "-q", device)  # someone formats it behind our back, before any rescan
        with pytest.raises(errors.Busy):
            await backend.create_volume(spec("pvc-1", 16 * MIB))
        assert states(backend)["d"][0] is State.EXCLUDED
    assert disks.head("d")[1024 + 56: 1024 + 58] == b"\x53\xef"  # the ext4 magic is still there


async def test_concurrent_creates_take_distinct_disks(disks: FakeDisks) -> None:
    for index in range(3):
        disks.add(f"d{index}", 64 * MIB)
    async with running(disks) as backend:
        results: dict[str, str] = {}

        async def create(name: str) -> None:
            results[name] = (await backend.create_volume(spec(name, 16 * MIB))).context["localcsi.dev/disk"]

        async with anyio.create_task_group() as tg:
            for index in range(3):
                tg.start_soon(create, f"pvc-{index}")
        assert len(set(results.values())) == 3


async def test_a_slow_wipe_holds_up_only_its_own_volume(disks: FakeDisks, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(2):
        disks.add(f"d{index}", 64 * MIB)
    wiping, release = threading.Event(), threading.Event()
    real_wipe = rawdisk_claim.wipe

    def slow_wipe(*args: Any, **kwargs: Any) -> None:
        wiping.set()
        assert release.wait(30)
        real_wipe(*args, **kwargs)

    monkeypatch.setattr(rawdisk_claim, "wipe", slow_wipe)
    async with running(disks) as backend:
        first = await backend.create_volume(spec("pvc-1", 16 * MIB))
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.delete_volume, first.volume_id)
            with anyio.fail_after(30):
                while not wiping.is_set():  # the wipe runs in a worker thread
                    await anyio.sleep(0.01)
            with anyio.fail_after(10):  # the pool is not locked while a disk is wiped
                second = await backend.create_volume(spec("pvc-2", 16 * MIB))
                assert (await backend.get_capacity({})).available_bytes == 0  # the disk being wiped is not free
                with pytest.raises(errors.Busy):
                    await backend.delete_volume(first.volume_id)
                with pytest.raises(errors.Busy):
                    await backend.create_volume(spec("pvc-1", 16 * MIB))
            release.set()
        assert second.context["localcsi.dev/disk"] != first.context["localcsi.dev/disk"]
        assert [v.name for v in await backend.list_volumes()] == ["pvc-2"]
        assert (await backend.get_capacity({})).available_bytes > 0


async def test_hotplug_adds_and_removes_disks_without_restart(disks: FakeDisks) -> None:
    disks.add("first", 64 * MIB)
    async with running(disks, watch=True) as backend:
        assert set(states(backend)) == {"first"}
        disks.add("second", 128 * MIB)
        assert await wait_for(lambda: states(backend).get("second", (None, ""))[0] is State.FREE)
        volume = await backend.create_volume(spec("pvc-hot", 100 * MIB))
        assert volume.context["localcsi.dev/disk"] == disks.link("second")
        assert not (await backend.get_volume(volume.volume_id)).condition.abnormal

        disks.remove("second")
        assert await wait_for(lambda: "second" not in states(backend))
        gone = await backend.get_volume(volume.volume_id)
        assert gone.condition.abnormal and "has disappeared" in gone.condition.message
        with pytest.raises(errors.Unavailable):
            await backend.attach(volume.volume_id, readonly=False)
        with pytest.raises(errors.PreconditionFailed):
            await backend.delete_volume(volume.volume_id)
        assert [v.volume_id for v in await backend.list_volumes()] == [volume.volume_id]


async def test_a_change_uevent_rereads_only_that_disk(disks: FakeDisks) -> None:
    """A disk's change (here: it grew) re-reads that disk alone; a change of a device off the allow-list
    (another loop device resized) reads nothing. Every claim, wipe and partition view makes such events."""
    disks.add("first", 64 * MIB)
    disks.add("second", 64 * MIB)
    outsider = disks.images / "outsider.img"
    with outsider.open("wb") as handle:
        handle.truncate(16 * MIB)
    other = sh("losetup", "--find", "--show", str(outsider)).strip()
    try:
        async with running(disks, watch=True) as backend:
            scans, reads = backend.scans, backend.disk_reads
            before = capacity(backend, "second")
            assert capacity(backend, "first") == before
            with (disks.images / "second.img").open("r+b") as handle:
                handle.truncate(128 * MIB)
            sh("losetup", "--set-capacity", disks.devices["second"])
            assert await wait_for(lambda: capacity(backend, "second") == before + 64 * MIB)
            assert capacity(backend, "first") == before
            assert (backend.scans, backend.disk_reads) == (scans, reads + 1)

            with outsider.open("r+b") as handle:
                handle.truncate(32 * MIB)
            sh("losetup", "--set-capacity", other)
            # No sleep for "long enough": a change of "first" after it is a marker. The kernel queues uevents in
            # order, so once "first" was re-read, the outsider's event was handled too (alone or with it).
            with (disks.images / "first.img").open("r+b") as handle:
                handle.truncate(128 * MIB)
            sh("losetup", "--set-capacity", disks.devices["first"])
            assert await wait_for(lambda: capacity(backend, "first") == before + 64 * MIB)
            assert (backend.scans, backend.disk_reads) == (scans, reads + 2)  # "second", then "first": nothing else
            assert set(states(backend)) == {"first", "second"}
    finally:
        sh("losetup", "-d", other)


def capacity(backend: RawdiskBackend, name: str) -> int:
    return next(d.capacity_bytes for d in backend.inventory() if d.path == f"{os.path.dirname(d.path)}/disk-{name}")


async def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)
    return bool(predicate())



async def test_4k_sector_disk(disks: FakeDisks) -> None:
    device = disks.add("4k", 512 * MIB, sector=4096)
    async with running(disks) as backend:
        volume = await backend.create_volume(spec("pvc-4k", 64 * MIB, fs_type="xfs"))
        table = partition_table(device)
        assert table["sectorsize"] == 4096
        [part] = table["partitions"]
        assert part["start"] * 4096 == MIB and part["size"] * 4096 == volume.capacity_bytes
        view = await backend.attach(volume.volume_id, readonly=False)
        block = Path(f"/sys/block/{os.path.basename(view)}/queue/logical_block_size")
        assert block.read_text().strip() == "4096"
        sh("mkfs.xfs", "-q", view)
        await backend.detach(volume.volume_id)
        await backend.delete_volume(volume.volume_id)
        assert states(backend)["4k"] == (State.FREE, "blank and eligible")
