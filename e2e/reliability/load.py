"""Phase 6: sustained load. 200 mixed operations in flight on 20 volumes for a fixed time.

Each of 200 workers loops until the deadline, picking a volume and an operation: CreateVolume of the same
name (idempotent), CreateVolume of one of a few shared new names (racing creators must get one volume),
ControllerGetVolume, ListVolumes, GetCapacity, ControllerPublish/Unpublish, NodeStage/Unstage,
NodePublish/Unpublish, NodeGetVolumeStats. Answers must be documented codes (busy volumes answer ABORTED);
DEADLINE_EXCEEDED means a call hung and is a finding (no deadlock). Reported: operations completed, p50/p99
latency, the driver's RSS before and after. Afterwards everything is torn down through the driver and the
node must hold no mount, loop device or file beyond what ListVolumes shows, and no volume twice.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.reliability.common import DOCUMENTED, MIB, NODE_ID, THIN, PhaseResult, ScratchNode, mount_cap, scratch_node

VOLUMES = 20
IN_FLIGHT = 200
SHARED_NEW_NAMES = 5
CALL_TIMEOUT = 30.0
RSS_GROWTH_LIMIT = 150 * MIB



def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Load:
    def __init__(self, node: ScratchNode, ids: list[str], result: PhaseResult, rng: random.Random) -> None:
        self.node, self.ids, self.result, self.rng = node, ids, result, rng
        stubs = node.driver.client()
        self.c, self.n = stubs.controller, stubs.node
        self.latencies: list[float] = []
        self.by_rpc: dict[str, list[float]] = {}
        self.codes: Counter[str] = Counter()
        self.unexpected: list[str] = []

    def staging(self, index: int) -> Path:
        return self.node.kubelet_dir / "plugins" / f"v{index}" / "globalmount"

    def target(self, index: int) -> Path:
        return self.node.kubelet_dir / "pods" / f"p{index}" / "volumes" / f"v{index}" / "mount"

    def operations(self, i: int) -> dict[str, Callable[[], Awaitable[Any]]]:
        vid, c, n = self.ids[i], self.c, self.n
        staging, target = str(self.staging(i)), str(self.target(i))
        shared = f"load-new-{self.rng.randrange(SHARED_NEW_NAMES)}"
        return {
            "CreateVolume(same)": lambda: c.create_volume(csi.CreateVolumeRequest(
                name=f"load-{i}", capacity_range=csi.CapacityRange(required_bytes=32 * MIB),
                volume_capabilities=[mount_cap()], parameters=THIN), timeout=CALL_TIMEOUT),
            "CreateVolume(racing)": lambda: c.create_volume(csi.CreateVolumeRequest(
                name=shared, capacity_range=csi.CapacityRange(required_bytes=16 * MIB),
                volume_capabilities=[mount_cap()], parameters=THIN), timeout=CALL_TIMEOUT),
            "ControllerGetVolume": lambda: c.controller_get_volume(
                csi.ControllerGetVolumeRequest(volume_id=vid), timeout=CALL_TIMEOUT),
            "ListVolumes": lambda: c.list_volumes(csi.ListVolumesRequest(), timeout=CALL_TIMEOUT),
            "GetCapacity": lambda: c.get_capacity(csi.GetCapacityRequest(parameters=THIN), timeout=CALL_TIMEOUT),
            "ControllerPublishVolume": lambda: c.controller_publish_volume(csi.ControllerPublishVolumeRequest(
                volume_id=vid, node_id=NODE_ID, volume_capability=mount_cap()), timeout=CALL_TIMEOUT),
            "ControllerUnpublishVolume": lambda: c.controller_unpublish_volume(csi.ControllerUnpublishVolumeRequest(
                volume_id=vid, node_id=NODE_ID), timeout=CALL_TIMEOUT),
            "NodeStageVolume": lambda: n.node_stage_volume(csi.NodeStageVolumeRequest(
                volume_id=vid, staging_target_path=staging, volume_capability=mount_cap()), timeout=CALL_TIMEOUT),
            "NodeUnstageVolume": lambda: n.node_unstage_volume(csi.NodeUnstageVolumeRequest(
                volume_id=vid, staging_target_path=staging), timeout=CALL_TIMEOUT),
            "NodePublishVolume": lambda: n.node_publish_volume(csi.NodePublishVolumeRequest(
                volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=mount_cap()),
                timeout=CALL_TIMEOUT),
            "NodeUnpublishVolume": lambda: n.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(
                volume_id=vid, target_path=target), timeout=CALL_TIMEOUT),
            "NodeGetVolumeStats": lambda: n.node_get_volume_stats(csi.NodeGetVolumeStatsRequest(
                volume_id=vid, volume_path=target), timeout=CALL_TIMEOUT),
        }

    async def one(self) -> None:
        i = self.rng.randrange(len(self.ids))
        rpc, send = self.rng.choice(list(self.operations(i).items()))
        started = time.perf_counter()
        code = "OK"
        try:
            await send()
        except GRPCError as exc:
            code = exc.status.name
            if exc.status not in DOCUMENTED:
                self.unexpected.append(f"{rpc} on volume {i}: {code} {exc.message}")
        except TimeoutError:
            code = "CLIENT_TIMEOUT"
            self.unexpected.append(f"{rpc} on volume {i} did not answer within {CALL_TIMEOUT} s")
        seconds = time.perf_counter() - started
        self.latencies.append(seconds)
        self.by_rpc.setdefault(rpc, []).append(seconds)
        self.codes[f"{rpc}:{code}"] += 1

    async def worker(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await self.one()


async def _call_until(fn: Callable[[], Awaitable[Any]], attempts: int = 50) -> None:
    """Teardown calls: retry ABORTED (a worker's call may still be finishing)."""
    for _ in range(attempts):
        try:
            await fn()
            return
        except GRPCError as exc:
            if exc.status.name != "ABORTED":
                raise
            await anyio.sleep(0.1)


async def teardown_all(load: Load) -> None:
    c, n = load.c, load.n
    for i, vid in enumerate(load.ids):
        await _call_until(lambda i=i, vid=vid: n.node_unpublish_volume(  # type: ignore[misc]
            csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(load.target(i)))))
        await _call_until(lambda i=i, vid=vid: n.node_unstage_volume(  # type: ignore[misc]
            csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(load.staging(i)))))
    listed = await c.list_volumes(csi.ListVolumesRequest())
    for entry in listed.entries:
        if entry.volume is not None:
            await _call_until(lambda v=entry.volume.volume_id: c.delete_volume(  # type: ignore[misc]
                csi.DeleteVolumeRequest(volume_id=v)))


async def run(seconds: float, seed: int) -> PhaseResult:
    result = PhaseResult("load")
    async with scratch_node("load", 2048 * MIB) as node:
        stubs = node.driver.client()
        ids = []
        for i in range(VOLUMES):
            resp = await stubs.controller.create_volume(csi.CreateVolumeRequest(
                name=f"load-{i}", capacity_range=csi.CapacityRange(required_bytes=32 * MIB),
                volume_capabilities=[mount_cap()], parameters=THIN))
            assert resp.volume is not None
            ids.append(resp.volume.volume_id)
        assert node.driver.process is not None
        pid = node.driver.process.pid
        rss_before = rss_bytes(pid)
        load = Load(node, ids, result, random.Random(seed))
        deadline = time.monotonic() + seconds
        async with anyio.create_task_group() as tg:
            for _ in range(IN_FLIGHT):
                tg.start_soon(load.worker, deadline)
        rss_after = rss_bytes(pid)
        result.check(node.driver.alive, "the driver died under load")
        for message in load.unexpected[:20]:
            result.fail(f"unexpected answer under load: {message}")
        listed = await stubs.controller.list_volumes(csi.ListVolumesRequest())
        names = [e.volume.volume_id for e in listed.entries if e.volume is not None]
        result.check(len(names) == len(set(names)), "a volume is listed twice")
        images = sorted(p.name for p in node.data_dir.glob("*.img"))
        result.check(len(images) == len(set(names)), f"{len(images)} images for {len(set(names))} listed volumes")
        result.check(len(set(names)) <= VOLUMES + SHARED_NEW_NAMES,
                     f"{len(set(names))} volumes exist; at most {VOLUMES + SHARED_NEW_NAMES} names were used")
        with anyio.fail_after(120):
            await teardown_all(load)
        result.check(not leaks.mounts_under(node.kubelet_dir), f"mounts left: {leaks.mounts_under(node.kubelet_dir)}")
        result.check(not leaks.loops_backed_under(node.data_dir), "loop devices left after teardown")
        left = sorted(p.name for p in node.data_dir.iterdir() if p.is_file())
        result.check(not left, f"files left after deleting every volume: {left}")
        growth = rss_after - rss_before
        result.check(growth < RSS_GROWTH_LIMIT, f"driver RSS grew by {growth >> 20} MiB under load")
        result.figures.update({
            "seconds": seconds, "in_flight": IN_FLIGHT, "volumes": VOLUMES,
            "operations": len(load.latencies),
            "p50_ms": round(percentile(load.latencies, 0.50) * 1000, 1),
            "p99_ms": round(percentile(load.latencies, 0.99) * 1000, 1),
            "max_ms": round(max(load.latencies, default=0) * 1000, 1),
            "p99_ms_by_rpc": {k: round(percentile(v, 0.99) * 1000, 1) for k, v in sorted(load.by_rpc.items())},
            "rss_before_mib": round(rss_before / MIB, 1), "rss_after_mib": round(rss_after / MIB, 1),
            "codes": dict(sorted(load.codes.items())),
            "unexpected_codes": len(load.unexpected),
            "volumes_after_load": len(set(names)),
        })
    return result
