"""The lvm backend's node path runs no LVM command unless LVM must change.

LVM answers are replayed from the kernel-lane recording of a restart
(tests/data/lvm/restart.jsonl). Device-mapper is faked the way the backend sees
it: a block device node under a private ``/dev`` and its ``dm/name`` under a
private ``/sys`` (making the node needs root).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import errors
from backends.base import volume_id_for
from backends.lvm.backend import LvmBackend
from backends.lvm.options import LvmOptions
from backends.system.lvm import dm_name
from backends.system.testing import FakeRunner
from tests.backends.lvm.replay import Replay, load, recorded_vg

pytestmark = pytest.mark.anyio

#: A device number no real device here uses; only the fake /sys describes it.
FAKE_MAJOR, FAKE_MINOR = 240, 7
THICK = volume_id_for("pvc-restart-a")


class FakeDeviceMapper:
    """Private /dev and /sys trees in which an LV is active while its dm node exists."""

    def __init__(self, root: Path, vg: str) -> None:
        self.dev = root / "dev"
        self.sys = root / "sys"
        self.vg = vg

    def node(self, lv: str) -> Path:
        return self.dev / self.vg / lv

    def activate(self, lv: str) -> None:
        self.node(lv).parent.mkdir(parents=True, exist_ok=True)
        os.mknod(self.node(lv), stat.S_IFBLK | 0o600, os.makedev(FAKE_MAJOR, FAKE_MINOR))
        name = self.sys / "dev" / "block" / f"{FAKE_MAJOR}:{FAKE_MINOR}" / "dm" / "name"
        name.parent.mkdir(parents=True, exist_ok=True)
        name.write_text(dm_name(self.vg, lv) + "\n")

    def deactivate(self, lv: str) -> None:
        self.node(lv).unlink(missing_ok=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="lvm-node-path-"))
    yield root
    shutil.rmtree(root)


def restarted_records() -> list[dict[str, object]]:
    records = load("restart.jsonl")
    starts = [i for i, r in enumerate(records) if r["argv"] == ["lvm", "version"]]
    return records[starts[1] :]


async def started(scratch: Path) -> tuple[LvmBackend, FakeRunner, FakeDeviceMapper]:
    """A backend after a restart; ``lvchange -ay/-an`` make or remove the fake dm node, as LVM would."""
    records = restarted_records()
    vg = recorded_vg(records)
    dm = FakeDeviceMapper(scratch, vg)
    replay = Replay(records)

    def handler(argv: tuple[str, ...]) -> tuple[int, str, str]:
        answer = replay(argv)
        if argv[0] == "lvchange" and answer[0] == 0:
            lv = argv[-1].split("/", 1)[1]
            if "-ay" in argv:
                dm.activate(lv)
            elif "-an" in argv:
                dm.deactivate(lv)
        return answer

    runner = FakeRunner(handler)
    backend = LvmBackend("node-a", LvmOptions(vg=vg, thinpool="pool"), runner)
    backend._lvm.dev_root, backend._lvm.sys_root = str(dm.dev), str(dm.sys)
    await backend.start()
    runner.calls.clear()
    return backend, runner, dm


@pytest.mark.root
async def test_a_staged_volume_answers_node_calls_without_lvm(scratch: Path) -> None:
    backend, runner, dm = await started(scratch)
    dm.activate(THICK)
    await backend.require_volume(THICK)  # NodeStage, NodePublish and NodeExpand's existence check
    assert await backend.device_path(THICK) == str(dm.node(THICK))
    assert await backend.attach(THICK, readonly=False) == str(dm.node(THICK))  # a second NodeStage
    assert await backend.publish_volume(THICK, "node-a", readonly=False) == {}  # already published there
    assert runner.calls == []


@pytest.mark.root
async def test_attach_and_detach_run_only_the_lvchange_that_changes_lvm(scratch: Path) -> None:
    backend, runner, dm = await started(scratch)
    assert await backend.device_path(THICK) is None
    assert runner.calls == []
    device = await backend.attach(THICK, readonly=False)
    assert device == str(dm.node(THICK))
    assert [argv[0] for argv in runner.calls] == ["lvchange"] and "-ay" in runner.calls[0]
    runner.calls.clear()
    await backend.detach(THICK)
    assert [argv[0] for argv in runner.calls] == ["lvchange"] and "-an" in runner.calls[0]
    assert await backend.device_path(THICK) is None


@pytest.mark.root
async def test_a_stale_node_of_another_device_is_not_the_volume(scratch: Path) -> None:
    backend, _, dm = await started(scratch)
    dm.activate(THICK)
    (dm.sys / "dev" / "block" / f"{FAKE_MAJOR}:{FAKE_MINOR}" / "dm" / "name").write_text("other-lv\n")
    assert await backend.device_path(THICK) is None


async def test_unpublish_changes_the_tag_and_the_index_without_rereading(scratch: Path) -> None:
    backend, runner, _ = await started(scratch)
    await backend.unpublish_volume(THICK, "node-a")
    assert [argv[0] for argv in runner.calls] == ["lvchange"] and "--deltag" in runner.calls[0]
    runner.calls.clear()
    await backend.unpublish_volume(THICK, "node-a")  # nothing left to remove: no command at all
    assert runner.calls == []


async def replayed(recording: str) -> tuple[LvmBackend, FakeRunner]:
    """A backend started from a recording, its start-up commands forgotten."""
    records = load(recording)
    runner = Replay(records).runner()
    backend = LvmBackend("node-a", LvmOptions(vg=recorded_vg(records), thinpool="pool"), runner)
    await backend.start()
    runner.calls.clear()
    return backend, runner


async def test_an_index_miss_asks_lvm() -> None:
    backend, runner = await replayed("create-delete.jsonl")
    # Not in the index (made by another instance, or never): one lvs decides, and LVM says it is not there.
    assert await backend.device_path(volume_id_for("pvc-thick")) is None
    assert [argv[0] for argv in runner.calls] == ["lvs"]


async def test_the_existence_check_asks_lvm_only_on_an_index_miss(scratch: Path) -> None:
    backend, runner, _ = await started(scratch)
    await backend.require_volume(THICK)  # in the index: no command
    assert runner.calls == []
    gone = FakeRunner(lambda argv: (5, "", f'  Failed to find logical volume "{backend.volume_group}/x"\n'))
    backend._lvm.runner = gone
    with pytest.raises(errors.VolumeNotFound):
        await backend.require_volume(volume_id_for("pvc-never-made"))
    assert [argv[0] for argv in gone.calls] == ["lvs"]


async def test_a_volume_removed_behind_our_back_is_not_found_on_attach(scratch: Path) -> None:
    backend, _, _ = await started(scratch)
    gone = (5, "", f'  Failed to find logical volume "{backend.volume_group}/{THICK}"\n')
    backend._lvm.runner = FakeRunner(lambda argv: gone)
    with pytest.raises(errors.VolumeNotFound):
        await backend.attach(THICK, readonly=False)
    with pytest.raises(errors.VolumeNotFound):  # dropped from the index: the miss asks LVM again
        await backend.publish_volume(THICK, "node-a", readonly=False)


def test_device_mapper_names_double_every_dash() -> None:
    # LVM's own escaping: "vg-a/lv-b" maps to "vg--a-lv--b", which no other VG/LV pair can produce.
    assert dm_name("vg-a", "lv-b") == "vg--a-lv--b"
    assert dm_name("vg", "lcv-0f") == "vg-lcv--0f"
