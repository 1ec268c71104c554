"""The LVM system layer against outputs recorded in the kernel lane (tests/data/lvm/commands.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backends import errors
from backends.system import lvm
from backends.system.errors import CommandError
from backends.system.testing import FakeRunner

pytestmark = pytest.mark.anyio

CASES: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "data" / "lvm" / "commands.json").read_text()
)["cases"]


def failure(case: str) -> CommandError:
    recorded = CASES[case]
    return CommandError(("lvm",), recorded["returncode"], recorded["stderr"])


def lvs(case: str) -> dict[str, lvm.LogicalVolume]:
    rows = lvm.parse_report(CASES[case]["stdout"], "lv")
    return {row["lv_name"]: lvm.LogicalVolume.from_json(row) for row in rows}


def test_parses_thick_thin_and_pool_rows_of_a_real_report() -> None:
    rows = lvs("lvs_all")
    thick, thin, pool = rows["thick1"], rows["thin1"], rows["pool"]
    assert thick.size_bytes == 100 * 1024**2 and thick.segtype == "linear" and not thick.thin
    assert thick.tags == ("localcsi.dev/name=pvc-ab_c", "localcsi.dev/owner=localcsi", "localcsi.dev/v=1")
    assert thick.path == "/dev/vg0/thick1" and thick.dm_path == "/dev/mapper/vg0-thick1"
    assert thin.thin and thin.pool_lv == "pool" and thin.size_bytes == 1024**3 and thin.data_percent == 0.0
    assert pool.thin_pool and pool.metadata_percent == 11.04 and pool.path == ""
    assert rows["[pool_tdata]"].hidden and not thin.hidden
    assert all(lv.active and lv.problem() is None for lv in (thick, thin, pool))


def test_inactive_lv_is_not_active_and_still_healthy() -> None:
    lv = lvs("lvs_inactive")["thick1"]
    assert not lv.active and not lv.open
    assert lv.problem() is None


def test_missing_pv_makes_the_lv_and_the_vg_partial() -> None:
    rows = lvs("lvs_missing_pv")
    assert rows["thin1"].problem() == "a physical volume under it is missing (partial)"
    assert rows["pool"].problem() is not None
    assert rows["[pool_tdata]"].problem() is None  # on the surviving PV
    vg = lvm.VolumeGroup.from_json(lvm.parse_report(CASES["vgs_missing_pv"]["stdout"], "vg")[0])
    assert vg.partial and vg.missing_pv_count == 1


def test_full_thin_pool_is_a_problem() -> None:
    row = dict(lvm.parse_report(CASES["lvs_pool_used"]["stdout"], "lv")[0])
    assert lvm.LogicalVolume.from_json(row).data_percent == 12.5
    row["data_percent"] = "100.00"
    assert lvm.LogicalVolume.from_json(row).problem() == "thin pool is out of data space"


def test_parses_a_volume_group() -> None:
    vg = lvm.VolumeGroup.from_json(lvm.parse_report(CASES["vgs_fresh"]["stdout"], "vg")[0])
    assert vg.name == "vg0" and vg.extent_size_bytes == 4 * 1024**2
    assert vg.free_count == vg.extent_count == 510 and vg.free_bytes == 510 * vg.extent_size_bytes
    assert not vg.partial


def test_report_of_a_missing_lv_is_empty_and_garbage_is_an_error() -> None:
    assert lvm.parse_report(CASES["lvs_missing"]["stdout"], "lv") == []
    with pytest.raises(errors.SystemFailure):
        lvm.parse_report("  WARNING: not json", "lv")


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("lvcreate_thick_toobig", errors.CapacityExhausted),
        ("lvextend_toobig", errors.CapacityExhausted),
        ("lvcreate_exists", errors.AlreadyExists),
        ("lvs_missing", lvm.LogicalVolumeNotFound),
        ("lvremove_missing", lvm.LogicalVolumeNotFound),
        ("lvextend_missing", lvm.LogicalVolumeNotFound),
        ("vgs_missing", lvm.VolumeGroupNotFound),
        ("lvs_missing_vg", lvm.VolumeGroupNotFound),
        ("lvremove_mounted", errors.VolumeInUse),
        ("lvchange_an_mounted", errors.VolumeInUse),
        ("lvcreate_badtag", errors.InvalidArgument),
    ],
)
def test_classifies_real_failures(case: str, kind: type[errors.BackendError]) -> None:
    classified = lvm.classify(failure(case))
    assert type(classified) is kind
    assert CASES[case]["stderr"].split()[0] in str(classified)


def test_unknown_failures_stay_command_errors() -> None:
    error = failure("lvchange_partial")  # refusing a partial LV: not one of ours to classify
    assert lvm.classify(error) is error
    timeout_like = CommandError(("lvs",), 1, "something odd")
    assert lvm.classify(timeout_like) is timeout_like


async def test_every_call_carries_the_container_config_and_ends_options() -> None:
    runner = FakeRunner(lambda argv: (0, CASES["lvs_one"]["stdout"], ""))
    found = await lvm.Lvm(runner).logical_volume("vg0", "thick1")
    assert found is not None and found.name == "thick1"
    argv = runner.calls[0]
    assert argv[:3] == ("lvs", "--config", lvm.CONTAINER_CONFIG)
    assert "udev_sync = 0" in lvm.CONTAINER_CONFIG and "obtain_device_list_from_udev = 0" in lvm.CONTAINER_CONFIG
    assert argv[-2:] == ("--", "vg0/thick1")
    assert {"--reportformat", "json", "--units", "b", "--nosuffix"} <= set(argv)


async def test_missing_lv_lookup_is_none_and_errors_are_classified() -> None:
    def handler(argv: tuple[str, ...]) -> tuple[int, str, str]:
        case = "lvs_missing" if argv[0] == "lvs" else "lvcreate_thick_toobig"
        return CASES[case]["returncode"], CASES[case]["stdout"], CASES[case]["stderr"]

    tool = lvm.Lvm(FakeRunner(handler))
    assert await tool.logical_volume("vg0", "nope") is None
    with pytest.raises(errors.CapacityExhausted) as caught:
        await tool.create_linear("vg0", "big", 10 * 1024**3, ["a=b"])
    assert isinstance(caught.value.__cause__, CommandError)


async def test_create_passes_sizes_in_bytes_tags_and_zeroing() -> None:
    runner = FakeRunner(lambda argv: (0, "", ""))
    tool = lvm.Lvm(runner)
    await tool.create_linear("vg0", "lv1", 8 * 1024**2, ["localcsi.dev/owner=localcsi"])
    await tool.create_thin("vg0", "pool", "lv2", 12 * 1024**2, [])
    thick, thin = runner.calls
    assert "8388608b" in thick and thick[thick.index("-Z") : thick.index("-Z") + 2] == ("-Z", "y")
    assert thick[thick.index("--addtag") + 1] == "localcsi.dev/owner=localcsi"
    assert thin[thin.index("--thinpool") + 1] == "pool" and thin[thin.index("-V") + 1] == "12582912b"
    with pytest.raises(errors.InvalidArgument):
        await tool.create_linear("vg0", "lv3", 8 * 1024**2, ["has space"])
    assert len(runner.calls) == 2


async def test_device_node_falls_back_to_the_mapper_node(tmp_path: Path) -> None:
    mapper = tmp_path / "vg0-lv1"
    mapper.touch()
    row = dict(lvm.parse_report(CASES["lvs_one"]["stdout"], "lv")[0])
    row.update(lv_path=str(tmp_path / "vg0" / "lv1"), lv_dm_path=str(mapper))
    runner = FakeRunner(lambda argv: (5, "", "Command failed with status code 5."))
    path = await lvm.Lvm(runner).device_node(lvm.LogicalVolume.from_json(row))
    assert path == str(mapper)
    assert runner.calls[0][0] == "vgmknodes"

    mapper.unlink()
    with pytest.raises(errors.SystemFailure):
        await lvm.Lvm(runner).device_node(lvm.LogicalVolume.from_json(row))
    assert ("dmsetup", "mknodes") in runner.calls


def test_tag_validity() -> None:
    assert lvm.valid_tag("localcsi.dev/name=pvc-1_2+3")
    assert not lvm.valid_tag("-leading") and not lvm.valid_tag("a b") and not lvm.valid_tag("")
