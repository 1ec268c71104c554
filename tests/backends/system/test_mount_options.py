from __future__ import annotations

import pytest

from backends.errors import InvalidArgument
from backends.system import mount as mnt


@pytest.mark.parametrize(
    ("options", "flags", "data"),
    [
        ((), 0, ""),
        (("ro",), mnt.MS_RDONLY, ""),
        (("ro", "rw"), 0, ""),
        (("nosuid,nodev", "noexec"), mnt.MS_NOSUID | mnt.MS_NODEV | mnt.MS_NOEXEC, ""),
        (("nosuid", "suid"), 0, ""),
        (("noatime", "nodiratime"), mnt.MS_NOATIME | mnt.MS_NODIRATIME, ""),
        (("noatime", "relatime"), mnt.MS_RELATIME, ""),
        (("strictatime",), mnt.MS_STRICTATIME, ""),
        (("sync", "dirsync", "lazytime"), mnt.MS_SYNCHRONOUS | mnt.MS_DIRSYNC | mnt.MS_LAZYTIME, ""),
        (("sync", "async"), 0, ""),
        (("defaults", "nofail", "x-systemd.automount", "_netdev"), 0, ""),
        (("discard", "nouuid"), 0, "discard,nouuid"),
        (("ro,discard,errors=remount-ro",), mnt.MS_RDONLY, "discard,errors=remount-ro"),
        (("commit=60", "data=ordered"), 0, "commit=60,data=ordered"),
        (("NOEXEC",), mnt.MS_NOEXEC, ""),
    ],
)
def test_flags_and_data(options: tuple[str, ...], flags: int, data: str) -> None:
    assert mnt.parse_mount_options(options) == (flags, data)


@pytest.mark.parametrize(
    "option",
    [
        "bind",
        "rbind",
        "remount",
        "move",
        "shared",
        "rprivate",
        "slave",
        "unbindable",
        "make-shared",
        "make-rslave",
        "user",
        "loop",
        "mand",
        "ro,bind",
        "discard\0",
        "logdev=/dev/sdb",
        "Upper",
        "a b",
        "opt;x",
        'context="a,b',
        "context=$(id)",
        "context=a b",
    ],
)
def test_refused(option: str) -> None:
    with pytest.raises(InvalidArgument):
        mnt.parse_mount_options([option])


def test_selinux_context_passes_through_with_its_commas() -> None:
    flags, data = mnt.parse_mount_options(['context="system_u:object_r:container_file_t:s0:c1,c2"', "noexec"])
    assert flags == mnt.MS_NOEXEC
    assert data == 'context="system_u:object_r:container_file_t:s0:c1,c2"'
    assert (
        mnt.parse_mount_options(["fscontext=system_u:object_r:foo_t:s0"])[1] == "fscontext=system_u:object_r:foo_t:s0"
    )


def test_overlong_data_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        mnt.parse_mount_options(["x" * 5000])
