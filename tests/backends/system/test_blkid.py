from __future__ import annotations

import pytest

from backends.system import blkid
from backends.system.errors import CommandError
from backends.system.runner import Result
from backends.system.testing import FakeRunner
from tests.backends.system.fixtures import DATA

pytestmark = pytest.mark.anyio

GOLDEN = DATA / "blkid"


def golden(case: str) -> FakeRunner:
    code = int((GOLDEN / f"{case}.rc").read_text())
    out = (GOLDEN / f"{case}.stdout").read_text()
    err = (GOLDEN / f"{case}.stderr").read_text()
    return FakeRunner(lambda argv: Result(argv, code, out, err, 0.0))


async def test_blank_device() -> None:
    runner = golden("blank")
    found = await blkid.probe(runner, "/dev/loop9")
    assert found.blank and not found.ambiguous
    assert found.description == "nothing (blank)"
    assert runner.calls == [("blkid", "-p", "-o", "export", "/dev/loop9")]


@pytest.mark.parametrize(
    ("case", "fs_type", "usage", "pt_type", "words"),
    [
        ("ext4", "ext4", "filesystem", "", "ext4 (filesystem)"),
        ("xfs", "xfs", "filesystem", "", "xfs (filesystem)"),
        ("btrfs", "btrfs", "filesystem", "", "btrfs (filesystem)"),
        ("swap", "swap", "other", "", "swap (other)"),
        ("lvm2_member", "LVM2_member", "raid", "", "LVM2_member (raid)"),
        ("gpt", "", "", "gpt", "a gpt partition table"),
        ("dos", "", "", "dos", "a dos partition table"),
    ],
)
async def test_anything_found_is_not_blank(case: str, fs_type: str, usage: str, pt_type: str, words: str) -> None:
    found = await blkid.probe(golden(case), "/dev/loop9")
    assert not found.blank
    assert not found.ambiguous
    assert (found.fs_type, found.usage, found.pt_type) == (fs_type, usage, pt_type)
    assert found.description == words
    assert "DEVNAME" not in found.raw


async def test_escaped_values_are_decoded() -> None:
    found = await blkid.probe(golden("lvm2_member"), "/dev/loop9")
    assert found.raw["VERSION"] == "LVM2 001"


async def test_ambivalent_probe_is_ambiguous_never_blank() -> None:
    found = await blkid.probe(golden("ambivalent"), "/dev/loop9")
    assert found.ambiguous and not found.blank
    assert "ambiguous" in found.description


async def test_ambivalent_in_stderr_alone_is_ambiguous() -> None:
    runner = FakeRunner(lambda argv: (2, "", "blkid: /dev/x: ambivalent result (probably more filesystems)"))
    found = await blkid.probe(runner, "/dev/x")
    assert found.ambiguous and not found.blank


async def test_a_probe_that_could_not_look_is_an_error_not_blank() -> None:
    with pytest.raises(CommandError, match="Operation not permitted"):
        await blkid.probe(golden("error_eperm"), "/dev/vda")


@pytest.mark.parametrize("outcome", [(4, "", "usage"), (0, "", ""), (1, "", ""), (2, "TYPE=ext4\n", "")])
async def test_unexpected_answers_are_errors(outcome: tuple[int, str, str]) -> None:
    with pytest.raises(CommandError):
        await blkid.probe(FakeRunner(lambda argv: outcome), "/dev/x")


async def test_unidentified_keys_are_not_blank() -> None:
    found = await blkid.probe(FakeRunner(lambda argv: (0, "DEVNAME=/dev/x\nPART_ENTRY_SCHEME=gpt\n", "")), "/dev/x")
    assert not found.blank
    assert "PART_ENTRY_SCHEME" in found.description


async def test_zeroed_primary_superblock_probes_blank_documented_limit() -> None:
    found = await blkid.probe(golden("xfs_primary_sb_zeroed"), "/dev/loop9")
    assert found.blank


async def test_missing_device_probes_blank_so_callers_must_check_first() -> None:
    found = await blkid.probe(golden("missing"), "/dev/nonexistent")
    assert found.blank
