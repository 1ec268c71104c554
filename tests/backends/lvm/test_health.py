"""The lvm backend reports a full thin pool: every listing and lookup shows its volumes abnormal.

The report has the shape LVM 2.03.16 gives for a pool out of data space (``lv_attr``
health character ``D``, ``lv_health_status`` ``out_of_data``, ``data_percent`` 100),
as seen in the kernel lane (tests/kernel/test_lvm_exhaustion.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends import errors
from backends.base import VolumeSpec
from backends.lvm.backend import LvmBackend
from backends.lvm.options import LvmOptions
from backends.lvm.tags import TAG_FORMAT, TAG_OWNER, condition_of
from backends.system import lvm
from backends.system.lvm import LV_FIELDS
from backends.system.testing import FakeRunner

pytestmark = pytest.mark.anyio

VG = "vg0"
THIN_ID = "lcv-" + "1" * 32
THICK_ID = "lcv-" + "2" * 32


def row(name: str, attr: str, segtype: str, *, pool: str = "", data: str = "", health: str = "",
        tags: str = "") -> dict[str, str]:
    values = {field: "" for field in LV_FIELDS}
    values.update(lv_name=name, vg_name=VG, lv_uuid=name, lv_size=str(64 << 20), lv_attr=attr, lv_tags=tags,
                  pool_lv=pool, data_percent=data, lv_health_status=health, segtype=segtype,
                  lv_path=f"/dev/{VG}/{name}", lv_dm_path=f"/dev/mapper/{VG}-{name}")
    return values


def report(pool_full: bool) -> str:
    tags = f"{TAG_OWNER},{TAG_FORMAT},localcsi.dev/name=pvc-a"
    pool = (row("pool", "twi-aotzD-", "thin-pool", data="100.00", health="out_of_data") if pool_full
            else row("pool", "twi-aotz--", "thin-pool", data="42.00"))
    rows = [pool, row(THIN_ID, "Vwi-aotz--", "thin", pool="pool", tags=tags),
            row(THICK_ID, "-wi-a-----", "linear", tags=tags.replace("pvc-a", "pvc-b"))]
    return json.dumps({"report": [{"lv": rows}]})


def backend(pool_full: bool) -> tuple[LvmBackend, FakeRunner]:
    def handler(argv: tuple[str, ...]) -> tuple[int, str, str]:
        if argv[0] == "lvs":
            target = argv[-1]
            text = report(pool_full)
            if "/" in target:  # one LV
                rows = [r for r in json.loads(text)["report"][0]["lv"] if r["lv_name"] == target.split("/")[1]]
                text = json.dumps({"report": [{"lv": rows}]})
            return 0, text, ""
        raise AssertionError(f"unexpected command {argv}")

    runner = FakeRunner(handler)
    return LvmBackend("node-a", LvmOptions(vg=VG, thinpool="pool", thin_overprovision=4.0), runner), runner


async def test_list_volumes_shows_the_volumes_of_a_full_pool_abnormal() -> None:
    lvm, _ = backend(pool_full=True)
    volumes = {v.volume_id: v for v in await lvm.list_volumes()}
    assert set(volumes) == {THIN_ID, THICK_ID}
    thin, thick = volumes[THIN_ID], volumes[THICK_ID]
    assert thin.condition.abnormal and "thin pool pool" in thin.condition.message
    assert "out_of_data" in thin.condition.message
    assert not thick.condition.abnormal, "a linear LV does not depend on the pool"
    got = await lvm.get_volume(THIN_ID)
    assert got.condition == thin.condition


async def test_list_volumes_reads_lvm_each_time() -> None:
    lvm, runner = backend(pool_full=False)
    assert not any(v.condition.abnormal for v in await lvm.list_volumes())
    calls = len(runner.calls)
    await lvm.list_volumes()
    assert len(runner.calls) == calls + 1, "one lvs per ListVolumes: a pool filling up shows at the next poll"


async def test_no_thin_volume_in_a_full_pool_even_within_the_overprovisioning_budget() -> None:
    lvm, runner = backend(pool_full=True)
    spec = VolumeSpec(name="pvc-new", required_bytes=8 << 20, limit_bytes=0,
                      parameters={"lvm.localcsi.dev/type": "thin"})
    with pytest.raises(errors.CapacityExhausted, match="thin pool vg0/pool"):
        await lvm.create_volume(spec)
    assert not [argv for argv in runner.calls if argv[0] == "lvcreate"]


def test_the_recorded_full_pool_makes_its_thin_volumes_abnormal() -> None:
    """``lvs`` as LVM 2.03.16 printed it in the kernel lane with the pool out of data space."""
    text = (Path(__file__).resolve().parents[2] / "data" / "lvm" / "lvs-pool-full.json").read_text()
    rows = {r.name: r for r in (lvm.LogicalVolume.from_json(x) for x in lvm.parse_report(text, "lv"))}
    pool = rows.pop("pool")
    assert pool.problem() is not None
    assert rows and all(condition_of(lv, pool).abnormal for lv in rows.values())
    assert all(not condition_of(lv, None).abnormal for lv in rows.values()), "the LVs themselves look healthy"
