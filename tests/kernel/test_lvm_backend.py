"""The lvm backend against real LVM and device-mapper (kernel lane: hack/vmtest)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from backends import errors, nodeops
from backends.base import ContentSource, SourceKind, VolumeSpec, volume_id_for
from backends.lvm.backend import PARAM_TYPE, LvmBackend
from backends.lvm.options import LvmOptions
from backends.system import mount
from backends.system.runner import Result, Runner
from e2e import leaks
from tests.kernel.lvmtools import VolumeGroup, sh

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio]

MIB = 1024**2
GIB = 1024**3


def spec(name: str, size: int, kind: str, fs_type: str = "ext4") -> VolumeSpec:
    return VolumeSpec(name=name, required_bytes=size, limit_bytes=0, parameters={PARAM_TYPE: kind}, fs_type=fs_type)


def our_lvs(vg: str) -> dict[str, str]:
    """LV name -> lv_attr for every LV in ``vg`` except the thin pool."""
    out = sh("lvs", "--noheadings", "-o", "lv_name,lv_attr", vg)
    rows = dict(line.split() for line in out.splitlines() if line.strip())
    return {name: attr for name, attr in rows.items() if name != "pool"}


def dm_devices(vg: VolumeGroup) -> str:
    return " ".join(leaks.dm_devices(vg.name))


@pytest.fixture
async def backend(lvm_vg: VolumeGroup, runner: Runner) -> AsyncIterator[LvmBackend]:
    instance = LvmBackend("node-a", LvmOptions(vg=lvm_vg.name, thinpool=lvm_vg.thinpool), runner)
    await instance.start()
    yield instance
    for volume in await instance.list_volumes():
        await instance.delete_volume(volume.volume_id)


async def test_create_and_delete_thick_and_thin_leave_nothing_behind(backend: LvmBackend, lvm_vg: VolumeGroup) -> None:
    thick = await backend.create_volume(spec("pvc-thick", 10 * MIB + 1, "thick"))
    thin = await backend.create_volume(spec("pvc-thin", 10 * MIB + 1, "thin"))
    # Rounded up to whole 4 MiB extents, and the real size reported.
    assert thick.capacity_bytes == thin.capacity_bytes == 12 * MIB
    assert thick.context["localcsi.dev/provisioning"] == "thick"
    assert thin.context["localcsi.dev/provisioning"] == "thin"
    lvs = our_lvs(lvm_vg.name)
    assert lvs[thick.volume_id][0] == "-" and lvs[thin.volume_id][0] == "V"
    assert all(attr[4] == "-" for attr in lvs.values()), "new LVs are left inactive"
    # Same request again: the same volume; a bigger one: conflict.
    assert await backend.create_volume(spec("pvc-thick", 10 * MIB, "thick")) == thick
    with pytest.raises(errors.VolumeConflict):
        await backend.create_volume(spec("pvc-thick", 20 * MIB, "thick"))
    with pytest.raises(errors.VolumeConflict):
        await backend.create_volume(spec("pvc-thin", 10 * MIB, "thick"))

    await backend.delete_volume(thick.volume_id)
    await backend.delete_volume(thin.volume_id)
    await backend.delete_volume(thin.volume_id)  # already gone: success
    assert our_lvs(lvm_vg.name) == {}
    assert thick.volume_id.replace("-", "--") not in dm_devices(lvm_vg)
    assert await backend.list_volumes() == []


async def test_an_lv_in_the_way_conflicts_and_one_removed_behind_our_back_is_made_again(
    backend: LvmBackend, lvm_vg: VolumeGroup
) -> None:
    foreign = volume_id_for("pvc-foreign")
    sh("lvcreate", "-q", "-y", "-L", "8m", "-n", foreign, lvm_vg.name)  # not ours: no localcsi tags
    try:
        with pytest.raises(errors.VolumeConflict, match="not created by localcsi"):
            await backend.create_volume(spec("pvc-foreign", 8 * MIB, "thick"))
        assert foreign in our_lvs(lvm_vg.name)  # left alone
    finally:
        sh("lvremove", "-q", "-y", f"{lvm_vg.name}/{foreign}")
    gone = await backend.create_volume(spec("pvc-gone", 8 * MIB, "thick"))
    sh("lvremove", "-q", "-y", f"{lvm_vg.name}/{gone.volume_id}")  # behind the driver's back
    again = await backend.create_volume(spec("pvc-gone", 8 * MIB, "thick"))
    assert again.volume_id == gone.volume_id and gone.volume_id in our_lvs(lvm_vg.name)


async def test_thick_volume_larger_than_the_vg_is_capacity_exhausted(backend: LvmBackend, lvm_vg: VolumeGroup) -> None:
    capacity = await backend.get_capacity({PARAM_TYPE: "thick"})
    with pytest.raises(errors.CapacityExhausted):
        await backend.create_volume(spec("pvc-huge", capacity.maximum_volume_bytes + 4 * MIB, "thick"))
    assert our_lvs(lvm_vg.name) == {}
    # The honest maximum really fits.
    volume = await backend.create_volume(spec("pvc-all", capacity.maximum_volume_bytes, "thick"))
    assert volume.capacity_bytes == capacity.maximum_volume_bytes
    assert (await backend.get_capacity({PARAM_TYPE: "thick"})).available_bytes == 0


@pytest.mark.parametrize(("fs_type", "kind"), [("ext4", "thick"), ("ext4", "thin"), ("xfs", "thick"), ("xfs", "thin")])
async def test_filesystem_survives_detach_and_grows_online(
    backend: LvmBackend, runner: Runner, lvm_vg: VolumeGroup, fs_type: str, kind: str
) -> None:
    volume = await backend.create_volume(spec(f"pvc-{fs_type}-{kind}", 300 * MIB, kind, fs_type))
    target = tempfile.mkdtemp(prefix="lvm-mnt-")
    payload = os.urandom(2 * MIB)

    device = await backend.attach(volume.volume_id, readonly=False)
    assert device == f"/dev/{lvm_vg.name}/{volume.volume_id}"
    assert await backend.device_path(volume.volume_id) == device
    assert await nodeops.ensure_formatted(runner, device, fs_type) is True
    await nodeops.ensure_mounted(device, target, fs_type)
    Path(target, "data").write_bytes(payload)
    await mount.clear_target(target, remove=False)
    await backend.detach(volume.volume_id)
    assert our_lvs(lvm_vg.name)[volume.volume_id][4] == "-", "detach deactivates"
    assert await backend.device_path(volume.volume_id) is None

    device = await backend.attach(volume.volume_id, readonly=False)
    assert await nodeops.ensure_formatted(runner, device, fs_type) is False
    await nodeops.ensure_mounted(device, target, fs_type)
    with pytest.raises(errors.VolumeInUse):
        await backend.detach(volume.volume_id)
    before = os.statvfs(target)
    assert await backend.expand_volume(volume.volume_id, 600 * MIB, 0) == 600 * MIB
    assert await backend.refresh_device_size(volume.volume_id) == 600 * MIB
    assert await nodeops.ensure_filesystem_grown(runner, device, target, fs_type) is True
    after = os.statvfs(target)
    assert after.f_blocks * after.f_frsize > 1.8 * before.f_blocks * before.f_frsize
    assert Path(target, "data").read_bytes() == payload

    await mount.clear_target(target)
    await backend.detach(volume.volume_id)
    await backend.delete_volume(volume.volume_id)
    assert volume.volume_id not in our_lvs(lvm_vg.name)
    assert volume.volume_id.replace("-", "--") not in dm_devices(lvm_vg)


class CountingRunner:
    """Runs commands through ``inner`` and keeps the name of each tool run."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.tools: list[str] = []

    async def run(
        self, argv: Sequence[str], *, timeout: float = 60.0, check: bool = True, stdin: bytes | None = None
    ) -> Result:
        self.tools.append(argv[0])
        return await self.inner.run(argv, timeout=timeout, check=check, stdin=stdin)


async def test_the_node_path_runs_lvm_only_to_change_it(lvm_vg: VolumeGroup, runner: Runner) -> None:
    counting = CountingRunner(runner)
    backend = LvmBackend("node-a", LvmOptions(vg=lvm_vg.name, thinpool=lvm_vg.thinpool), counting)
    await backend.start()
    counting.tools.clear()
    volume = await backend.create_volume(spec("pvc-node-path", 12 * MIB, "thick"))
    # A new name goes straight to lvcreate; lvchange -an undoes lvcreate's activation; lvs reads back the LV.
    assert counting.tools == ["lvcreate", "lvchange", "lvs"], "CreateVolume: no lvs before lvcreate"
    await backend.publish_volume(volume.volume_id, "node-a", readonly=False)
    target = tempfile.mkdtemp(prefix="lvm-mnt-")
    try:
        counting.tools.clear()
        assert await backend.device_path(volume.volume_id) is None
        device = await backend.attach(volume.volume_id, readonly=False)
        assert counting.tools == ["lvchange"], "NodeStage: one activation, no lvs"
        await nodeops.ensure_formatted(runner, device, "ext4")
        await nodeops.ensure_mounted(device, target, "ext4")
        counting.tools.clear()
        assert await backend.device_path(volume.volume_id) == device
        assert await backend.attach(volume.volume_id, readonly=False) == device
        assert await backend.publish_volume(volume.volume_id, "node-a", readonly=False) == {}
        with pytest.raises(errors.VolumeInUse):
            await backend.detach(volume.volume_id)
        assert counting.tools == [], "a staged volume needs no LVM command"
        await mount.clear_target(target, remove=False)
        await backend.detach(volume.volume_id)
        assert counting.tools == ["lvchange"], "NodeUnstage: one deactivation, no lvs"
        assert our_lvs(lvm_vg.name)[volume.volume_id][4] == "-"
        assert await backend.device_path(volume.volume_id) is None
    finally:
        await mount.clear_target(target)
        await backend.detach(volume.volume_id)
        await backend.delete_volume(volume.volume_id)


async def test_thin_capacity_follows_the_overprovisioning_ratio(lvm_vg: VolumeGroup, runner: Runner) -> None:
    backend = LvmBackend("node-a", LvmOptions(vg=lvm_vg.name, thinpool=lvm_vg.thinpool, thin_overprovision=2.0), runner)
    await backend.start()
    pool_bytes = int(
        sh(
            "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size", f"{lvm_vg.name}/{lvm_vg.thinpool}"
        ).strip()
    )
    capacity = await backend.get_capacity({})  # thin by default: a pool is configured
    assert capacity.available_bytes == capacity.maximum_volume_bytes == 2 * pool_bytes
    first = await backend.create_volume(spec("pvc-over-1", pool_bytes + 4 * MIB, "thin"))
    try:
        left = (await backend.get_capacity({})).available_bytes
        assert left == 2 * pool_bytes - first.capacity_bytes
        with pytest.raises(errors.CapacityExhausted):
            await backend.create_volume(spec("pvc-over-2", left + 4 * MIB, "thin"))
        with pytest.raises(errors.CapacityExhausted):
            await backend.expand_volume(first.volume_id, first.capacity_bytes + left + 4 * MIB, 0)
        second = await backend.create_volume(spec("pvc-over-2", left, "thin"))
        assert (await backend.get_capacity({})).available_bytes == 0
        await backend.delete_volume(second.volume_id)
    finally:
        await backend.delete_volume(first.volume_id)
    assert (await backend.get_capacity({})).available_bytes == 2 * pool_bytes


async def test_a_new_instance_finds_every_volume_from_lvm_alone(
    backend: LvmBackend, lvm_vg: VolumeGroup, runner: Runner
) -> None:
    odd_name = "pvc with spaces/and ünïcode"
    a = await backend.create_volume(spec("pvc-restart-a", 8 * MIB, "thick"))
    b = await backend.create_volume(spec(odd_name, 8 * MIB, "thin"))
    await backend.publish_volume(a.volume_id, "node-a", readonly=False)
    device = await backend.attach(a.volume_id, readonly=False)

    restarted = LvmBackend("node-a", LvmOptions(vg=lvm_vg.name, thinpool=lvm_vg.thinpool), runner)
    await restarted.start()
    found = {v.volume_id: v for v in await restarted.list_volumes()}
    assert set(found) == {a.volume_id, b.volume_id}
    assert found[a.volume_id].name == "pvc-restart-a"
    assert found[a.volume_id].published_node_ids == ("node-a",)
    assert found[b.volume_id].name == odd_name
    assert found[b.volume_id].capacity_bytes == 8 * MIB
    assert await restarted.device_path(a.volume_id) == device
    assert await restarted.device_path(b.volume_id) is None

    # The /dev/<vg>/<lv> link is recreated when it is missing (no udev here).
    os.unlink(device)
    await restarted.detach(a.volume_id)
    assert await restarted.attach(a.volume_id, readonly=False) == device
    await restarted.unpublish_volume(a.volume_id, "node-a")
    assert (await restarted.get_volume(a.volume_id)).published_node_ids == ()
    await restarted.detach(a.volume_id)


async def test_condition_reports_a_healthy_volume(backend: LvmBackend) -> None:
    volume = await backend.create_volume(spec("pvc-health", 8 * MIB, "thin"))
    got = await backend.get_volume(volume.volume_id)
    assert got.condition.abnormal is False
    with pytest.raises(errors.VolumeNotFound):
        await backend.get_volume("lcv-" + "0" * 32)


def test_lvm_runs_without_udev() -> None:
    """The lane's premise: no udevd, and LVM still makes its device nodes."""
    assert not Path("/run/udev/control").exists()
    assert subprocess.run(["dmsetup", "version"], capture_output=True, check=False).returncode == 0


async def test_thin_snapshots_restores_and_clones_are_independent_thin_lvs(
    backend: LvmBackend, lvm_vg: VolumeGroup, runner: Runner
) -> None:
    source = await backend.create_volume(spec("pvc-snap-src", 8 * MIB, "thin"))
    snap = await backend.create_snapshot(source.volume_id, "snap-1", {"csi.storage.k8s.io/volumesnapshot/name": "s"})
    assert (snap.source_volume_id, snap.size_bytes, snap.name) == (source.volume_id, 8 * MIB, "snap-1")
    assert await backend.create_snapshot(source.volume_id, "snap-1", {}) == snap
    lvs = our_lvs(lvm_vg.name)
    assert lvs[snap.snapshot_id][0] == "V" and lvs[snap.snapshot_id][9] == "k", "thin, skipped on activation"

    restored = await backend.create_volume(replace(spec("pvc-restored", 16 * MIB, "thin"),
                                                   source=ContentSource(SourceKind.SNAPSHOT, snap.snapshot_id)))
    clone = await backend.create_volume(replace(spec("pvc-clone", 0, "thin"),
                                                source=ContentSource(SourceKind.VOLUME, source.volume_id)))
    assert (restored.capacity_bytes, clone.capacity_bytes) == (16 * MIB, 8 * MIB)
    assert restored.source == ContentSource(SourceKind.SNAPSHOT, snap.snapshot_id)
    lvs = our_lvs(lvm_vg.name)
    assert lvs[restored.volume_id][4] == "-" and lvs[restored.volume_id][9] == "-", "inactive, activatable"
    assert await backend.attach(restored.volume_id, readonly=False) == f"/dev/{lvm_vg.name}/{restored.volume_id}"
    await backend.detach(restored.volume_id)

    thick = await backend.create_volume(spec("pvc-snap-thick", 8 * MIB, "thick"))
    with pytest.raises(errors.InvalidArgument):
        await backend.create_snapshot(thick.volume_id, "snap-thick", {})
    with pytest.raises(errors.SnapshotConflict):
        await backend.create_snapshot(thick.volume_id, "snap-1", {})
    with pytest.raises(errors.OutOfRange):
        await backend.create_volume(replace(spec("pvc-small", 4 * MIB, "thin"),
                                            source=ContentSource(SourceKind.SNAPSHOT, snap.snapshot_id)))

    restarted = LvmBackend("node-a", LvmOptions(vg=lvm_vg.name, thinpool=lvm_vg.thinpool), runner)
    await restarted.start()
    assert await restarted.list_snapshots() == [snap]
    assert (await restarted.get_volume(clone.volume_id)).source == ContentSource(SourceKind.VOLUME, source.volume_id)
    await restarted.delete_volume(source.volume_id)
    assert await restarted.get_snapshot(snap.snapshot_id) == snap, "a snapshot outlives its source"
    await restarted.delete_snapshot(snap.snapshot_id)
    await restarted.delete_snapshot(snap.snapshot_id)
    with pytest.raises(errors.SnapshotNotFound):
        await restarted.get_snapshot(snap.snapshot_id)
    for volume in (restored, clone, thick):
        await restarted.delete_volume(volume.volume_id)
    assert our_lvs(lvm_vg.name) == {}
