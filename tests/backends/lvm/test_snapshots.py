"""lvm snapshots, restores and clones on the host: LVM answers replayed from a kernel-lane recording.

``tests/data/lvm/snapshots.jsonl`` is every command of
``tests/kernel/test_lvm_backend.py::test_thin_snapshots_restores_and_clones_are_independent_thin_lvs``.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from backends import errors
from backends.base import ContentSource, SourceKind, VolumeSpec, snapshot_id_for, volume_id_for
from backends.lvm.backend import PARAM_TYPE, LvmBackend
from backends.lvm.options import LvmOptions
from backends.lvm.tags import TAG_CREATED, decode_tags
from backends.provisioning import check_snapshot_parameters
from backends.system.testing import FakeRunner
from tests.backends.lvm.replay import Replay, load, recorded_vg

pytestmark = pytest.mark.anyio

MIB = 1024**2
RECORDS = load("snapshots.jsonl")


def spec(name: str, size: int, kind: str, source: ContentSource | None = None) -> VolumeSpec:
    return VolumeSpec(name=name, required_bytes=size, limit_bytes=0, parameters={PARAM_TYPE: kind}, fs_type="ext4",
                      source=source)


def recorded_creation_time() -> datetime:
    for record in RECORDS:
        argv = record["argv"]
        assert isinstance(argv, list)
        if argv[0] == "lvcreate" and "-s" in argv:
            tags = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--addtag"]
            found = decode_tags(tags, TAG_CREATED)
            if found:
                return datetime.fromisoformat(found[0])
    raise AssertionError("no snapshot lvcreate in the recording")


@pytest.fixture(autouse=True)
def _recorded_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot's created tag is part of the recorded argv: replay at the recorded instant."""
    moment = recorded_creation_time()

    class Clock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Clock:
            return cls.fromisoformat(moment.isoformat())

    monkeypatch.setattr("backends.lvm.backend.datetime", Clock)


async def started() -> tuple[LvmBackend, FakeRunner]:
    runner = Replay(RECORDS).runner()
    backend = LvmBackend("node-a", LvmOptions(vg=recorded_vg(RECORDS), thinpool="pool"), runner)
    await backend.start()
    return backend, runner


def lvcreates(runner: FakeRunner) -> list[tuple[str, ...]]:
    return [argv for argv in runner.calls if argv[0] == "lvcreate"]


def option(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


async def test_a_snapshot_is_a_tagged_thin_snapshot_skipped_on_activation() -> None:
    backend, runner = await started()
    assert backend.features.snapshots and backend.features.clones
    source = await backend.create_volume(spec("pvc-snap-src", 8 * MIB, "thin"))
    snap = await backend.create_snapshot(source.volume_id, "snap-1", {"csi.storage.k8s.io/volumesnapshot/name": "s"})
    assert snap.snapshot_id == snapshot_id_for("snap-1")
    assert (snap.name, snap.source_volume_id, snap.size_bytes) == ("snap-1", source.volume_id, 8 * MIB)
    assert snap.creation_time == recorded_creation_time() and snap.creation_time.tzinfo is not None
    argv = lvcreates(runner)[-1]
    assert "-s" in argv and "-L" not in argv and "-V" not in argv, "a thin snapshot takes no size"
    assert option(argv, "--setactivationskip") == "y"
    assert argv[-1].endswith(f"/{source.volume_id}")
    creates = len(lvcreates(runner))
    assert await backend.create_snapshot(source.volume_id, "snap-1", {}) == snap
    assert len(lvcreates(runner)) == creates, "a retried CreateSnapshot finds its LV"


async def test_restore_and_clone_are_activatable_thin_snapshots_grown_to_size() -> None:
    backend, runner = await started()
    source = await backend.create_volume(spec("pvc-snap-src", 8 * MIB, "thin"))
    snap = await backend.create_snapshot(source.volume_id, "snap-1", {})
    from_snap = ContentSource(SourceKind.SNAPSHOT, snap.snapshot_id)
    restored = await backend.create_volume(spec("pvc-restored", 16 * MIB, "thin", from_snap))
    assert (restored.capacity_bytes, restored.source) == (16 * MIB, from_snap)
    argv = lvcreates(runner)[-1]
    assert option(argv, "--setactivationskip") == "n" and argv[-1].endswith(f"/{snap.snapshot_id}")
    assert "localcsi.dev/content-source=snapshot:" + snap.snapshot_id in argv
    extend = [a for a in runner.calls if a[0] == "lvextend"]
    assert len(extend) == 1 and "16777216b" in extend[0]
    clone = await backend.create_volume(spec("pvc-clone", 0, "thin", ContentSource(SourceKind.VOLUME,
                                                                                  source.volume_id)))
    assert clone.capacity_bytes == 8 * MIB and lvcreates(runner)[-1][-1].endswith(f"/{source.volume_id}")
    assert len([a for a in runner.calls if a[0] == "lvextend"]) == 1, "same size: no lvextend"
    # Same name again with the same source: the same volume; with another source: a conflict.
    assert await backend.create_volume(spec("pvc-restored", 16 * MIB, "thin", from_snap)) == restored
    with pytest.raises(errors.VolumeConflict):
        await backend.create_volume(spec("pvc-restored", 16 * MIB, "thin"))


async def test_thick_sources_and_small_restores_are_refused_before_lvm() -> None:
    backend, runner = await started()
    source = await backend.create_volume(spec("pvc-snap-src", 8 * MIB, "thin"))
    snap = await backend.create_snapshot(source.volume_id, "snap-1", {})
    await backend.create_volume(spec("pvc-restored", 16 * MIB, "thin", ContentSource(SourceKind.SNAPSHOT,
                                                                                    snap.snapshot_id)))
    await backend.create_volume(spec("pvc-clone", 0, "thin", ContentSource(SourceKind.VOLUME, source.volume_id)))
    thick = await backend.create_volume(spec("pvc-snap-thick", 8 * MIB, "thick"))
    creates = len(lvcreates(runner))
    with pytest.raises(errors.InvalidArgument, match="thick"):
        await backend.create_snapshot(thick.volume_id, "snap-thick", {})
    with pytest.raises(errors.SnapshotConflict):
        await backend.create_snapshot(thick.volume_id, "snap-1", {})
    with pytest.raises(errors.OutOfRange):
        await backend.create_volume(spec("pvc-small", 4 * MIB, "thin", ContentSource(SourceKind.SNAPSHOT,
                                                                                    snap.snapshot_id)))
    with pytest.raises(errors.UnsupportedParameter):
        await backend.create_snapshot(source.volume_id, "snap-2", {"lvm.localcsi.dev/type": "thin"})
    assert len(lvcreates(runner)) == creates


async def test_a_restarted_backend_lists_snapshots_from_tags_and_deletes_them() -> None:
    records = RECORDS
    starts = [i for i, r in enumerate(records) if r["argv"] == ["lvm", "version"]]
    runner = Replay(records[starts[1]:]).runner()
    backend = LvmBackend("node-a", LvmOptions(vg=recorded_vg(records), thinpool="pool"), runner)
    await backend.start()
    (snap,) = await backend.list_snapshots()
    assert snap.name == "snap-1" and snap.creation_time == recorded_creation_time()
    # What the restarted instance learnt at start-up (one lvs of the VG), as the kernel-lane test checks it.
    clone = await backend.get_volume(volume_id_for("pvc-clone"))
    assert clone.source == ContentSource(SourceKind.VOLUME, volume_id_for("pvc-snap-src"))
    assert await backend.get_snapshot(snap.snapshot_id) == snap


def test_snapshot_parameters_accept_only_the_sidecar_keys() -> None:
    check_snapshot_parameters({"csi.storage.k8s.io/volumesnapshot/name": "x"}, "lvm")
    with pytest.raises(errors.UnsupportedParameter):
        check_snapshot_parameters({"other": "x"}, "lvm")


def test_a_pool_less_backend_offers_no_snapshots() -> None:
    backend = LvmBackend("node-a", LvmOptions(vg="vg0"), FakeRunner(lambda argv: (0, "", "")))
    assert not backend.features.snapshots and not backend.features.clones
