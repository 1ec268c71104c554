"""The benchmark's phases (csi/bench/phases.py) against an in-memory driver: what they call, count and skip.

The transport answers each CSI route from a dictionary of volumes, so a test knows every call a phase made,
can refuse some with a code, and can leave out capabilities the phase must then skip.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

import betterproto2
import pytest

from csi.bench import phases
from csi.bench.client import CallFailed, CsiClient
from csi.bench.stats import ProcSample
from csi.capabilities import CRpc, NRpc

pytestmark = pytest.mark.anyio
R = TypeVar("R", bound=betterproto2.Message)


class MemoryDriver:
    """A :class:`~csi.bench.client.Transport` that is the driver: volumes by name, every call recorded."""

    def __init__(self, *, controller_publish: bool = True, node_stage: bool = True,
                 refuse_creates_of: frozenset[str] = frozenset()) -> None:
        self.controller = [CRpc.CREATE_DELETE_VOLUME, CRpc.LIST_VOLUMES] + (
            [CRpc.PUBLISH_UNPUBLISH_VOLUME] if controller_publish else [])
        self.node = [NRpc.GET_VOLUME_STATS] + ([NRpc.STAGE_UNSTAGE_VOLUME] if node_stage else [])
        self.refuse = refuse_creates_of
        self.volumes: dict[str, str] = {}  # volume id -> name
        self.calls: list[str] = []

    async def call(self, route: str, request: betterproto2.Message, response_type: type[R], seconds: float) -> R:
        name = route.rsplit("/", 1)[1]
        self.calls.append(name)
        return response_type.from_dict(self.answer(name, request))

    def answer(self, rpc: str, request: Any) -> dict[str, Any]:
        if rpc == "NodeGetInfo":
            return {"nodeId": "bench-node"}
        if rpc == "ControllerGetCapabilities":
            return {"capabilities": [{"rpc": {"type": c.name}} for c in self.controller]}
        if rpc == "NodeGetCapabilities":
            return {"capabilities": [{"rpc": {"type": c.name}} for c in self.node]}
        if rpc == "CreateVolume":
            if any(request.name.endswith(suffix) for suffix in self.refuse):
                raise CallFailed("ABORTED", "busy")
            volume_id = f"lcv-{request.name}"
            self.volumes[volume_id] = request.name
            return {"volume": {"volumeId": volume_id, "capacityBytes": str(request.capacity_range.required_bytes)}}
        if rpc == "DeleteVolume":
            self.volumes.pop(request.volume_id, None)
            return {}
        if rpc == "ListVolumes":
            ids = sorted(self.volumes)
            start = ids.index(request.starting_token) + 1 if request.starting_token else 0
            end = len(ids) if not request.max_entries else min(len(ids), start + request.max_entries)
            token = ids[end - 1] if end < len(ids) else ""
            return {"entries": [{"volume": {"volumeId": i}} for i in ids[start:end]], "nextToken": token}
        if rpc == "GetCapacity":
            return {"availableCapacity": "1000"}
        return {}

    def close(self) -> None: ...


def target(driver: MemoryDriver, tmp_path: Path, pid: int = 0) -> phases.Target:
    return phases.Target(CsiClient(driver), "bench-node", PUBLISH in driver.controller, STAGE in driver.node,
                         str(tmp_path), {"k": "v"}, pid=pid, run_id="t1")


PUBLISH, STAGE = CRpc.PUBLISH_UNPUBLISH_VOLUME, NRpc.STAGE_UNSTAGE_VOLUME


async def test_discover_reads_the_node_and_what_it_offers(tmp_path: Path) -> None:
    for publish, stage in ((True, True), (False, False)):
        driver = MemoryDriver(controller_publish=publish, node_stage=stage)
        found = await phases.discover(CsiClient(driver), str(tmp_path), {"k": "v"}, 0)
        assert (found.node_id, found.controller_publish, found.node_stage) == ("bench-node", publish, stage)
        assert found.run_id and found.name("cd", 3) == f"bench-{found.run_id}-cd-3"


async def test_probe_warms_up_then_times_every_call(tmp_path: Path) -> None:
    driver = MemoryDriver()
    result = await phases.probe(target(driver, tmp_path), 30)
    assert result["latency"]["Probe"]["count"] == 30 and result["errors"] == {}
    assert driver.calls == ["Probe"] * 60  # min(100, calls) to warm up, then the timed ones
    assert result["driver_cpu"] is None  # no pid to measure


async def test_create_delete_makes_each_pair_once_and_counts_refusals(tmp_path: Path) -> None:
    driver = MemoryDriver(refuse_creates_of=frozenset({"-3", "-7"}))
    result = await phases.create_delete(target(driver, tmp_path), in_flight=4, volumes=10, size=1 << 20,
                                        fs_type="ext4")
    assert Counter(driver.calls) == {"CreateVolume": 10, "DeleteVolume": 8}
    assert result["errors"] == {"CreateVolume": {"ABORTED": 2}} and result["errors_total"] == 2
    assert result["latency"]["CreateVolume"]["count"] == result["latency"]["DeleteVolume"]["count"] == 8
    assert result["rpcs_per_second"] > 0  # 16 answered RPCs over the wall time; a pair is two of them
    assert result["pairs_per_second"] == pytest.approx(result["rpcs_per_second"] / 2, abs=0.1)
    assert driver.volumes == {}


@pytest.mark.parametrize(("publish", "stage"), [(True, True), (False, False)])
async def test_provision_walks_the_path_and_skips_what_is_not_offered(tmp_path: Path, publish: bool,
                                                                      stage: bool) -> None:
    driver = MemoryDriver(controller_publish=publish, node_stage=stage)
    result = await phases.provision(target(driver, tmp_path), "ext4", iterations=2, size=1 << 20, stats_calls=3,
                                    pair_calls=1)
    one = ["CreateVolume", *(["ControllerPublishVolume"] if publish else []), *(["NodeStageVolume"] if stage else []),
           "NodePublishVolume", "NodeGetVolumeStats", "NodeGetVolumeStats", "NodeGetVolumeStats",
           "NodePublishVolume", "NodeUnpublishVolume", "NodeUnpublishVolume",
           *(["NodeUnstageVolume"] if stage else []), *(["ControllerUnpublishVolume"] if publish else []),
           "DeleteVolume"]
    assert driver.calls == one * 2
    assert result["latency"]["up (create → publish)"]["count"] == 2
    assert result["node_calls"]["NodePublish+NodeUnpublish pair"]["count"] == 2
    assert result["errors"] == {} and driver.volumes == {}
    assert all((tmp_path / f"bench-t1-prov-ext4-{i}" / d).is_dir() for i in (0, 1) for d in ("staging", "pods"))


async def test_scale_fills_lists_every_page_and_cleans_up(tmp_path: Path) -> None:
    driver = MemoryDriver()
    driver.volumes["lcv-someone-elses"] = "someone-elses"
    result = await phases.scale(target(driver, tmp_path), existing=7, samples=2, size=1 << 20, fs_type="ext4",
                                page_size=3, in_flight=2)
    assert (result["volumes_before"], result["existing"], result["listed"]) == (1, 7, 8)
    assert result["latency"]["GetCapacity"]["count"] == 200
    assert result["create_at_0"]["count"] == result["create_at_existing"]["count"] == 2
    assert result["errors"] == {}
    assert driver.volumes == {"lcv-someone-elses": "someone-elses"}  # only what the phase made is deleted


def test_the_cost_per_operation_comes_from_the_driver_samples() -> None:
    before, after = ProcSample(0, 0, 2.0, 1.0), ProcSample(0, 0, 2.5, 1.5)
    assert phases.with_cost({}, before, after, 100)["driver_cpu"] == {"cpu_ms_per_op": 5.0,
                                                                       "children_cpu_ms_per_op": 5.0}
    assert phases.with_cost({"x": 1}, None, after, 100) == {"x": 1, "driver_cpu": None}
