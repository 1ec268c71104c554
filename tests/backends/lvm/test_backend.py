"""The lvm backend on the host: LVM answers replayed from kernel-lane recordings (tests/data/lvm/*.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends import errors
from backends.base import VolumeSpec, volume_id_for
from backends.lvm.backend import PARAM_TYPE, LvmBackend, parse_type
from backends.lvm.options import LvmOptions
from backends.lvm.tags import TAG_NAME, condition_of, decode_tags, encode_tag
from backends.options import OptionError
from backends.system import lvm
from backends.system.testing import FakeRunner
from tests.backends.lvm.replay import Replay, load, recorded_vg

pytestmark = pytest.mark.anyio

MIB = 1024**2
ODD_NAME = "pvc with spaces/and ünïcode"


def spec(name: str, size: int, kind: str) -> VolumeSpec:
    return VolumeSpec(name=name, required_bytes=size, limit_bytes=0, parameters={PARAM_TYPE: kind})


def calls_of(runner: FakeRunner, tool: str) -> list[tuple[str, ...]]:
    return [argv for argv in runner.calls if argv[0] == tool]


async def started(records: list[dict[str, object]], overprovision: float = 1.0) -> tuple[LvmBackend, FakeRunner]:
    runner = Replay(records).runner()
    options = LvmOptions(vg=recorded_vg(records), thinpool="pool", thin_overprovision=overprovision)
    backend = LvmBackend("node-a", options, runner)
    await backend.start()
    return backend, runner


def second_start(records: list[dict[str, object]]) -> list[dict[str, object]]:
    starts = [i for i, r in enumerate(records) if r["argv"] == ["lvm", "version"]]
    return records[starts[1] :]


async def test_a_restarted_backend_rebuilds_every_volume_from_tags() -> None:
    backend, runner = await started(second_start(load("restart.jsonl")))
    volumes = {v.name: v for v in await backend.list_volumes()}
    assert set(volumes) == {"pvc-restart-a", ODD_NAME}
    a, odd = volumes["pvc-restart-a"], volumes[ODD_NAME]
    assert a.volume_id == volume_id_for("pvc-restart-a") and odd.volume_id == volume_id_for(ODD_NAME)
    assert a.capacity_bytes == odd.capacity_bytes == 8 * MIB
    assert a.published_node_ids == ("node-a",) and odd.published_node_ids == ()
    assert a.context == {"localcsi.dev/backend": "lvm", "localcsi.dev/provisioning": "thick"}
    assert odd.context["localcsi.dev/provisioning"] == "thin"
    # start() made no change to LVM: reports only.
    assert {argv[0] for argv in runner.calls} <= {"lvm", "vgs", "lvs"}


async def test_create_rounds_to_extents_tags_and_leaves_the_lv_inactive() -> None:
    backend, runner = await started(load("create-delete.jsonl"))
    before = len(runner.calls)
    thick = await backend.create_volume(spec("pvc-thick", 10 * MIB + 1, "thick"))
    # A new name: straight to lvcreate (LVM's "already exists" is the idempotency check), then read back.
    assert [argv[0] for argv in runner.calls[before:]] == ["lvcreate", "lvchange", "lvs"]
    thin = await backend.create_volume(spec("pvc-thin", 10 * MIB + 1, "thin"))
    assert thick.capacity_bytes == thin.capacity_bytes == 12 * MIB
    create_thick, create_thin = calls_of(runner, "lvcreate")
    assert "12582912b" in create_thick and "--thinpool" in create_thin and "12582912b" in create_thin
    # A thin LV is made inactive; only the linear one, activated by lvcreate to zero it, needs lvchange -an.
    assert "-an" in create_thin and "-an" not in create_thick
    assert len(calls_of(runner, "lvchange")) == 1
    for argv in (create_thick, create_thin):
        tags = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--addtag"]
        assert {"localcsi.dev/owner=localcsi", "localcsi.dev/format=1"} <= set(tags)
    assert calls_of(runner, "lvchange")[0][-3:] == (
        "-an",
        "--",
        f"{recorded_vg(load('create-delete.jsonl'))}/{thick.volume_id}",
    )


async def test_create_again_is_idempotent_and_conflicts_are_refused() -> None:
    records = load("create-delete.jsonl")
    backend, runner = await started(records)
    thick = await backend.create_volume(spec("pvc-thick", 10 * MIB + 1, "thick"))
    await backend.create_volume(spec("pvc-thin", 10 * MIB + 1, "thin"))
    creates = len(calls_of(runner, "lvcreate"))
    assert await backend.create_volume(spec("pvc-thick", 10 * MIB, "thick")) == thick
    with pytest.raises(errors.VolumeConflict):
        await backend.create_volume(spec("pvc-thick", 20 * MIB, "thick"))
    with pytest.raises(errors.VolumeConflict):
        await backend.create_volume(spec("pvc-thin", 10 * MIB, "thick"))
    assert len(calls_of(runner, "lvcreate")) == creates


async def test_a_thick_volume_beyond_the_free_extents_is_capacity_exhausted() -> None:
    backend, _ = await started(load("thick-capacity.jsonl"))
    capacity = await backend.get_capacity({PARAM_TYPE: "thick"})
    assert capacity.available_bytes == capacity.maximum_volume_bytes == 1020 * 4 * MIB
    assert capacity.minimum_volume_bytes == 4 * MIB
    with pytest.raises(errors.CapacityExhausted, match="insufficient free space"):
        await backend.create_volume(spec("pvc-huge", capacity.maximum_volume_bytes + 4 * MIB, "thick"))


async def test_thin_capacity_is_pool_size_times_ratio_minus_virtual_sizes() -> None:
    backend, runner = await started(load("thin-capacity.jsonl"), overprovision=2.0)
    pool_bytes = 2 * 1024**3
    assert (await backend.get_capacity({})).available_bytes == 2 * pool_bytes
    first = await backend.create_volume(spec("pvc-over-1", pool_bytes + 4 * MIB, "thin"))
    left = (await backend.get_capacity({})).available_bytes
    assert left == 2 * pool_bytes - first.capacity_bytes
    creates = len(calls_of(runner, "lvcreate"))
    with pytest.raises(errors.CapacityExhausted, match="overprovisioning ratio 2"):
        await backend.create_volume(spec("pvc-over-2", left + 4 * MIB, "thin"))
    with pytest.raises(errors.CapacityExhausted):
        await backend.expand_volume(first.volume_id, first.capacity_bytes + left + 4 * MIB, 0)
    assert len(calls_of(runner, "lvcreate")) == creates and calls_of(runner, "lvextend") == []


async def test_unknown_or_invalid_volumes_never_reach_lvm() -> None:
    runner = FakeRunner(lambda argv: (0, "", ""))
    backend = LvmBackend("node-a", LvmOptions(vg="vg0", thinpool=""), runner)
    with pytest.raises(errors.VolumeNotFound):
        await backend.get_volume("../etc")
    await backend.delete_volume("not-an-id")
    assert runner.calls == []


def test_parameters_choose_thin_or_thick() -> None:
    assert parse_type({}, has_pool=True) is True
    assert parse_type({}, has_pool=False) is False
    assert parse_type({PARAM_TYPE: "thick", "csi.storage.k8s.io/pvc/name": "x"}, has_pool=True) is False
    with pytest.raises(errors.UnsupportedParameter):
        parse_type({PARAM_TYPE: "thin"}, has_pool=False)
    with pytest.raises(errors.UnsupportedParameter):
        parse_type({PARAM_TYPE: "fat"}, has_pool=True)
    with pytest.raises(errors.UnsupportedParameter):
        parse_type({"lvm.localcsi.dev/stripes": "2"}, has_pool=True)


def test_names_round_trip_through_tags() -> None:
    for name in ("pvc-0a1b", ODD_NAME, "x" * 128):
        tag = encode_tag(TAG_NAME, name)
        assert lvm.valid_tag(tag)
        assert decode_tags([tag, "other=1"], TAG_NAME) == [name]
    assert encode_tag(TAG_NAME, "pvc-0a1b") == "localcsi.dev/name=pvc-0a1b"


def test_condition_follows_the_lv_and_its_pool() -> None:
    data = json.loads((Path(__file__).resolve().parents[2] / "data" / "lvm" / "commands.json").read_text())
    rows = {
        row["lv_name"]: lvm.LogicalVolume.from_json(row)
        for row in lvm.parse_report(data["cases"]["lvs_missing_pv"]["stdout"], "lv")
    }
    broken = condition_of(rows["thin1"], rows["pool"])
    assert broken.abnormal and "missing" in broken.message
    healthy = {
        row["lv_name"]: lvm.LogicalVolume.from_json(row)
        for row in lvm.parse_report(data["cases"]["lvs_all"]["stdout"], "lv")
    }
    assert condition_of(healthy["thin1"], healthy["pool"]).abnormal is False


def test_options_validate_and_open_the_backend_they_describe() -> None:
    runner = FakeRunner(lambda argv: (0, "", ""))
    with pytest.raises(OptionError, match=r"vg \(--lvm-vg\)"):
        LvmOptions(vg="", thinpool="").open("n", runner)
    with pytest.raises(OptionError, match="thin_overprovision"):
        LvmOptions(vg="vg0", thinpool="pool", thin_overprovision=0.5).validate()
    built = LvmOptions.from_mapping({"vg": "vg0", "thin_overprovision": 1.5}).open("n", runner)
    assert isinstance(built, LvmBackend)
    assert built.volume_group == "vg0" and built.thinpool is None and built.features.snapshots is False
    assert LvmOptions(vg="vg0", thinpool="tp").features().snapshots is True


async def test_start_fails_loudly_without_the_volume_group() -> None:
    data = json.loads((Path(__file__).resolve().parents[2] / "data" / "lvm" / "commands.json").read_text())
    missing = data["cases"]["vgs_missing"]

    def handler(argv: tuple[str, ...]) -> tuple[int, str, str]:
        if argv[0] == "vgs":
            return missing["returncode"], missing["stdout"], missing["stderr"]
        return 0, "LVM version: 2.03.16(2)", ""

    backend = LvmBackend("n", LvmOptions(vg="nope", thinpool=""), FakeRunner(handler))
    with pytest.raises(errors.Unavailable, match="volume group 'nope' does not exist"):
        await backend.start()
