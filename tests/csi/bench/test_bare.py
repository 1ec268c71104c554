"""The floor (csi/bench/bare.py): the provisioning path as bare commands, in order, and undone when one fails.

A fake runner plays the commands; the real ones run in tests/csi/bench/test_main.py's spawned benchmark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.system.errors import CommandError
from backends.system.loop import LOGICAL_BLOCK_BYTES
from backends.system.mkfs import mkfs_argv
from backends.system.runner import Result
from backends.system.testing import FakeRunner
from csi.bench.bare import provision_bare

pytestmark = pytest.mark.anyio
DEVICE = "/dev/loop42"


def commands(failing: str = "") -> FakeRunner:
    """losetup prints its device; ``failing`` (a command's first two words) exits 1."""

    def handle(argv: tuple[str, ...]) -> Result | tuple[int, str, str]:
        if failing and " ".join(argv[:2]).startswith(failing):
            return 1, "", f"{argv[0]}: failed"
        return 0, DEVICE + "\n" if argv[:2] == ("losetup", "--direct-io=on") else "", ""

    return FakeRunner(handle)


def steps(runner: FakeRunner) -> list[str]:
    """Each command by its name and first option (``umount PATH`` is just ``umount``)."""
    return [" ".join(argv[:2]) if argv[1].startswith("-") else argv[0] for argv in runner.calls]


async def test_the_loopfile_path_with_the_drivers_loop_and_mkfs_settings(tmp_path: Path) -> None:
    runner = commands()
    result = await provision_bare(str(tmp_path), "xfs", 2, 64 << 20, runner=runner)
    assert steps(runner) == ["fallocate -l", "losetup --direct-io=on", "mkfs.xfs -q", "mount -t", "mount --bind",
                             "umount", "umount", "losetup -d", "rm -f"] * 2
    losetup = next(argv for argv in runner.calls if argv[0] == "losetup")
    assert losetup[:4] == ("losetup", "--direct-io=on", "--sector-size", str(LOGICAL_BLOCK_BYTES))
    assert next(argv for argv in runner.calls if argv[0].startswith("mkfs")) == tuple(mkfs_argv(DEVICE, "xfs"))
    targets = [argv[-1] for argv in runner.calls if argv[0] == "umount"]
    assert [Path(t).name for t in targets[:2]] == ["target", "staging"]  # the bind first, then the mount under it
    assert (result["kind"], result["iterations"], result["fs_type"]) == ("loopfile", 2, "xfs")
    assert result["latency"]["up (bare)"]["count"] == result["latency"]["down (bare)"]["count"] == 2
    assert list(tmp_path.iterdir()) == []  # its scratch directory is gone


async def test_the_lvm_path(tmp_path: Path) -> None:
    runner = commands()
    result = await provision_bare(str(tmp_path), "ext4", 1, 64 << 20, lvm_vg="vg0", runner=runner)
    assert steps(runner) == ["lvcreate -q", "mkfs.ext4 -q", "mount -t", "mount --bind", "umount", "umount",
                             "lvremove -q"]
    assert runner.calls[-1][-1].startswith("vg0/bare-") and result["kind"] == "lvm"


@pytest.mark.parametrize(("failing", "undone"), [
    ("mount --bind", ["umount", "losetup -d"]),  # the staging mount and the loop device go
    ("mkfs.ext4 -q", ["losetup -d"]),
    ("losetup --direct-io=on", []),
])
async def test_a_failing_step_undoes_what_came_before_and_raises(tmp_path: Path, failing: str,
                                                                 undone: list[str]) -> None:
    runner = commands(failing)
    with pytest.raises(CommandError):
        await provision_bare(str(tmp_path), "ext4", 1, 64 << 20, runner=runner)
    done = steps(runner)
    assert done[done.index(failing) + 1:] == undone
    assert list(tmp_path.iterdir()) == []


async def test_a_failing_lvm_step_removes_the_lv(tmp_path: Path) -> None:
    runner = commands("mount -t")
    with pytest.raises(CommandError):
        await provision_bare(str(tmp_path), "ext4", 1, 64 << 20, lvm_vg="vg0", runner=runner)
    assert steps(runner)[-2:] == ["mount -t", "lvremove -q"]
