from __future__ import annotations

import pytest

from backends.errors import InvalidArgument
from backends.system import mkfs
from backends.system.errors import CommandError
from backends.system.testing import FakeRunner

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("fs_type", "argv"),
    [
        ("ext4", ("mkfs.ext4", "-q", "-E", "nodiscard,lazy_itable_init=1", "/dev/loop4")),
        ("xfs", ("mkfs.xfs", "-q", "-K", "/dev/loop4")),
        ("btrfs", ("mkfs.btrfs", "-q", "-K", "/dev/loop4")),
    ],
)
async def test_argv_per_filesystem(fs_type: str, argv: tuple[str, ...]) -> None:
    runner = FakeRunner(lambda a: (0, "", ""))
    await mkfs.make_filesystem(runner, "/dev/loop4", fs_type)
    assert runner.calls == [argv]
    assert runner.timeouts == [mkfs.MKFS_TIMEOUT]


async def test_never_forces_over_an_existing_signature() -> None:
    for fs_type in mkfs.SUPPORTED_FS_TYPES:
        argv = mkfs.mkfs_argv("/dev/x", fs_type)
        assert "-f" not in argv and "-F" not in argv


async def test_options_follow_defaults_and_precede_the_device() -> None:
    runner = FakeRunner(lambda a: (0, "", ""))
    await mkfs.make_filesystem(runner, "/dev/loop4", "ext4", options=["-m", "0", "-L", "data"])
    assert runner.calls[0][-5:] == ("-m", "0", "-L", "data", "/dev/loop4")


@pytest.mark.parametrize("fs_type", ["ntfs", "ext3", "", "xfs;rm"])
async def test_unknown_type_is_invalid_argument(fs_type: str) -> None:
    runner = FakeRunner(lambda a: (0, "", ""))
    with pytest.raises(InvalidArgument):
        await mkfs.make_filesystem(runner, "/dev/loop4", fs_type)
    assert runner.calls == []


async def test_option_with_control_character_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        mkfs.mkfs_argv("/dev/x", "ext4", ["-L", "a\nb"])


async def test_failure_surfaces_as_command_error() -> None:
    runner = FakeRunner(lambda a: (1, "", "mkfs.xfs: /dev/loop4 appears to contain an existing filesystem (xfs)."))
    with pytest.raises(CommandError, match="existing filesystem"):
        await mkfs.make_filesystem(runner, "/dev/loop4", "xfs")


def test_available_types_are_supported_types() -> None:
    assert set(mkfs.available_fs_types()) <= set(mkfs.SUPPORTED_FS_TYPES)
