"""The one leak checker (e2e/leaks.py): it finds what a test made, and only that.

Each check makes its own mount, loop device or claimed disk and one just like it outside the scope it
asks about (the stand-in for another process on the CI machine), and the checker must see the first
and never the second.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.ids import volume_id_for
from backends.lvm.tags import TAG_OWNER
from backends.rawdisk.claim import PARTITION_TYPE
from e2e import leaks

MIB = 1 << 20


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60, input=stdin).stdout


def test_the_markers_are_the_backends_own() -> None:
    """The checker names the driver's on-disk marks itself (it must not trust the driver's code): they agree."""
    assert leaks.LV_OWNER_TAG == TAG_OWNER
    assert str(PARTITION_TYPE) == leaks.RAWDISK_PARTITION_TYPE


def test_ids_are_ours_and_other_names_are_not() -> None:
    assert leaks.ours(volume_id_for("pvc-1"))
    assert not leaks.ours("pool") and not leaks.ours("lcv-short")


@pytest.fixture
def two_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``mine`` and ``theirs`` (another test's directory, whose name starts like mine), unmounted afterwards."""
    mine, theirs = tmp_path / "mine", tmp_path / "mine-other"
    for directory in (mine, theirs):
        directory.mkdir()
    try:
        yield mine, theirs
    finally:
        for point in sorted(leaks.mounts_under(tmp_path), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def tmpfs(point: Path) -> None:
    point.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "leaks-test", str(point))


@pytest.mark.root
def test_mounts_under_a_directory_and_nowhere_else(two_dirs: tuple[Path, Path]) -> None:
    mine, theirs = two_dirs
    tmpfs(mine / "a")
    tmpfs(mine / "a")  # stacked
    tmpfs(theirs / "b")
    assert leaks.mounts_under(mine) == [str(mine / "a")] * 2
    assert leaks.mount_count(mine / "a") == 2
    assert leaks.stray_mounts(mine, [mine / "a"]) == [f"2 mounts stacked at {mine / 'a'}"]
    assert leaks.stray_mounts(mine, []) == [f"stray mount {mine / 'a'}"]
    assert leaks.find(leaks.Scope(kubelet_dir=mine)) == {"mounts": [str(mine / "a")] * 2}
    assert str(mine / "a") not in leaks.mounts_under(theirs)


@pytest.fixture
def loop_over(tmp_path: Path) -> Iterator[list[str]]:
    """Attach loop devices over files; every device attached here is detached afterwards."""
    attached: list[str] = []
    try:
        yield attached
    finally:
        for device in attached:
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


def attach(loops: list[str], backing: Path | str, size: int = 4 * MIB) -> str:
    if isinstance(backing, Path) and not backing.exists():
        with backing.open("wb") as handle:
            handle.truncate(size)
    device = sh("losetup", "--find", "--show", str(backing)).strip()
    loops.append(device)
    return device


@pytest.mark.root
def test_loop_devices_by_backing_file(two_dirs: tuple[Path, Path], loop_over: list[str]) -> None:
    mine, theirs = two_dirs
    image = attach(loop_over, mine / "image.img")
    attach(loop_over, theirs / "image.img")
    view = attach(loop_over, image)  # a loop device over a device, as rawdisk's partition views are
    assert [(i.device, i.backing_file) for i in leaks.loops_backed_under(mine)] == [(image, str(mine / "image.img"))]
    assert [i.device for i in leaks.loops_backed_by([image])] == [view]
    (number,) = [i.number for i in leaks.loops_backed_under(mine)]
    assert number == sh("lsblk", "-dno", "MAJ:MIN", image).strip()
    assert leaks.find(leaks.Scope(data_dir=mine)) == {"loops": [image]}


@pytest.mark.root
def test_claimed_and_signed_disks(tmp_path: Path, loop_over: list[str]) -> None:
    claimed = attach(loop_over, tmp_path / "claimed.img", 8 * MIB)
    foreign = attach(loop_over, tmp_path / "foreign.img", 8 * MIB)
    blank = attach(loop_over, tmp_path / "blank.img", 8 * MIB)
    volume_id = volume_id_for("pvc-claimed")
    ours = f"label: gpt\nstart=2048, type={leaks.RAWDISK_PARTITION_TYPE}, name={volume_id}\n"
    sh("sfdisk", "--quiet", claimed, stdin=ours)
    sh("sfdisk", "--quiet", foreign, stdin="label: gpt\n,\n")
    disks = [claimed, foreign, blank]
    assert leaks.claimed_disks(disks) == {claimed: volume_id}
    assert leaks.signed_disks(disks) == [claimed, foreign]
    assert leaks.find(leaks.Scope(disks=tuple(disks))) == {"views": [], "disks": [claimed]}
