from __future__ import annotations

import pytest

from backends.system import mount as mnt
from tests.backends.system.fixtures import DATA

PREFIX = "/var/lib/kubelet/pods/x"


@pytest.fixture
def entries() -> list[mnt.MountInfo]:
    return mnt.parse_mountinfo((DATA / "mountinfo.txt").read_text())


def test_fields_of_a_plain_line(entries: list[mnt.MountInfo]) -> None:
    root = mnt.topmost(entries, "/")
    assert root == mnt.MountInfo(
        mount_id=27,
        parent_id=1,
        major_minor="254:0",
        root="/",
        mount_point="/",
        options=("rw", "relatime"),
        fs_type="ext4",
        source="/dev/vda",
        super_options=("rw", "discard", "resv_strict", "resuid=65534", "resgid=65534"),
        optional=(),
    )
    assert not root.readonly


@pytest.mark.parametrize("name", ["with space", "tab\there", "new\nline", "back\\slash", "ünï"])
def test_escaped_paths_decode(entries: list[mnt.MountInfo], name: str) -> None:
    entry = mnt.topmost(entries, f"{PREFIX}/{name}")
    assert entry is not None
    assert entry.mount_point == f"{PREFIX}/{name}"
    assert entry.source.startswith("src ")
    assert "noexec" in entry.options


def test_topmost_of_a_stack_is_the_upper_mount(entries: list[mnt.MountInfo]) -> None:
    stack = mnt.stacked(entries, f"{PREFIX}/stack")
    assert [e.source for e in stack] == ["lower", "upper"]
    top = mnt.topmost(entries, f"{PREFIX}/stack/")
    assert top is not None and top.source == "upper" and top.readonly


def test_topmost_ignores_line_order() -> None:
    lines = (DATA / "mountinfo.txt").read_text().splitlines()
    upper = next(line for line in lines if " upper " in line)
    reordered = [upper] + [line for line in lines if line != upper]
    top = mnt.topmost(mnt.parse_mountinfo("\n".join(reordered)), f"{PREFIX}/stack")
    assert top is not None and top.source == "upper"


def test_read_only_bind_mount_of_a_rw_superblock(entries: list[mnt.MountInfo]) -> None:
    bind = mnt.topmost(entries, f"{PREFIX}/bind")
    assert bind is not None
    assert bind.readonly
    assert bind.super_options[0] == "rw"
    assert bind.major_minor == "0:39"


def test_optional_fields_and_subdirectory_root(entries: list[mnt.MountInfo]) -> None:
    entry = mnt.topmost(entries, "/var/lib/kubelet/plugins/staging")
    assert entry is not None
    assert entry.optional == ("shared:12", "master:3")
    assert (entry.root, entry.fs_type, entry.source, entry.major_minor) == ("/sub", "xfs", "/dev/loop3", "7:3")


def test_absent_mount_point(entries: list[mnt.MountInfo]) -> None:
    assert mnt.topmost(entries, f"{PREFIX}/nothing") is None
    assert mnt.topmost(entries, PREFIX) is None


def test_malformed_line_raises() -> None:
    with pytest.raises(ValueError, match="malformed"):
        mnt.parse_mountinfo("1 2 3 / /x rw\n")
