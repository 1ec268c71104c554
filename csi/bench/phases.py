"""The control-plane benchmark phases, each driving a CSI endpoint the way the sidecars and kubelet do.

Every phase returns a JSON-able dict; latencies are in milliseconds, error
counts are keyed by RPC and gRPC code. Any CSI driver can be the target: the
phases look up the node id and the controller/node capabilities first and skip
ControllerPublish or NodeStage where the driver does not advertise them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from csi.bench.client import CsiClient
from csi.bench.stats import ProcSample, Recorder, Summary, cpu_per_op, sample_process
from csi.gen.csi import v1 as csi

MIB = 1 << 20
PUBLISH_UNPUBLISH = 2
STAGE_UNSTAGE = 1


@dataclass(frozen=True)
class Target:
    client: CsiClient
    node_id: str
    controller_publish: bool
    node_stage: bool
    work_dir: str
    parameters: dict[str, str]
    pid: int = 0
    run_id: str = ""

    def sample(self) -> ProcSample | None:
        if not self.pid:
            return None
        try:
            return sample_process(self.pid)
        except OSError:
            return None

    def name(self, phase: str, index: int) -> str:
        return f"bench-{self.run_id}-{phase}-{index}"


async def discover(client: CsiClient, work_dir: str, parameters: dict[str, str], pid: int) -> Target:
    info = await client.node_info()
    controller = await client.controller_capabilities()
    node = await client.node_capabilities()
    return Target(client=client, node_id=info.node_id, controller_publish=PUBLISH_UNPUBLISH in controller,
                  node_stage=STAGE_UNSTAGE in node, work_dir=work_dir, parameters=parameters, pid=pid,
                  run_id=uuid.uuid4().hex[:8])


def access_mode() -> csi.VolumeCapabilityAccessMode:
    return csi.VolumeCapabilityAccessMode(mode=csi.VolumeCapabilityAccessModeMode.SINGLE_NODE_WRITER)


def mount_cap(fs_type: str) -> csi.VolumeCapability:
    return csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type=fs_type), access_mode=access_mode())


def block_cap() -> csi.VolumeCapability:
    return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=access_mode())


def create_request(target: Target, name: str, size: int, cap: csi.VolumeCapability) -> csi.CreateVolumeRequest:
    return csi.CreateVolumeRequest(name=name, capacity_range=csi.CapacityRange(required_bytes=size),
                                   volume_capabilities=[cap], parameters=target.parameters)


async def run_workers(count: int, work: Callable[[], Coroutine[Any, Any, None]]) -> float:
    """Run ``count`` copies of ``work`` concurrently; return the wall time."""
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(work)
    return time.perf_counter() - started


def with_cost(result: dict[str, Any], before: ProcSample | None, after: ProcSample | None, ops: int) -> dict[str, Any]:
    cost = cpu_per_op(before, after, ops)
    result["driver_cpu"] = asdict(cost) if cost is not None else None
    return result


# ---------------------------------------------------------------- Probe


async def probe(target: Target, calls: int) -> dict[str, Any]:
    rec = Recorder()
    for _ in range(min(100, calls)):  # warm the connection and the driver's code paths
        await target.client.probe()
    before = target.sample()
    for _ in range(calls):
        await rec.timed("Probe", target.client.probe)
    return with_cost({"latency": rec.summaries(), "errors": rec.error_table()}, before, target.sample(), calls)


# ---------------------------------------------------------------- Create + Delete


async def create_delete(target: Target, in_flight: int, volumes: int, size: int, fs_type: str) -> dict[str, Any]:
    """``volumes`` Create+Delete pairs with ``in_flight`` concurrent callers; ops = RPCs answered OK."""
    rec = Recorder()
    indexes: Iterator[int] = iter(range(volumes))
    cap = mount_cap(fs_type)

    async def worker() -> None:
        for i in indexes:  # one shared iterator: each index is taken exactly once
            req = create_request(target, target.name(f"cd{in_flight}", i), size, cap)
            resp = await rec.timed("CreateVolume", lambda req=req: target.client.create_volume(req))  # type: ignore[misc]
            if resp is not None and resp.volume is not None:
                vid = resp.volume.volume_id
                await rec.timed("DeleteVolume", lambda vid=vid: target.client.delete_volume(vid))  # type: ignore[misc]

    before = target.sample()
    elapsed = await run_workers(in_flight, worker)
    after = target.sample()
    ops = rec.ok_count
    return with_cost({
        "in_flight": in_flight, "volumes": volumes, "seconds": round(elapsed, 3),
        "rpcs_per_second": round(ops / elapsed, 1), "pairs_per_second": round(ops / 2 / elapsed, 1),
        "errors_total": rec.error_count, "errors": rec.error_table(), "latency": rec.summaries(),
    }, before, after, ops)


# ---------------------------------------------------------------- scale


async def _create_many(target: Target, phase: str, count: int, *, size: int, fs_type: str, in_flight: int,
                       rec: Recorder) -> list[str]:
    ids: list[str] = []
    indexes = iter(range(count))
    cap = mount_cap(fs_type)

    async def worker() -> None:
        for i in indexes:
            req = create_request(target, target.name(phase, i), size, cap)
            resp = await rec.timed("CreateVolume", lambda req=req: target.client.create_volume(req))  # type: ignore[misc]
            if resp is not None and resp.volume is not None:
                ids.append(resp.volume.volume_id)

    await run_workers(in_flight, worker)
    return ids


async def _delete_many(target: Target, ids: list[str], in_flight: int, rec: Recorder) -> None:
    pending = iter(list(ids))

    async def worker() -> None:
        for vid in pending:
            await rec.timed("DeleteVolume", lambda vid=vid: target.client.delete_volume(vid))  # type: ignore[misc]

    await run_workers(in_flight, worker)


async def _sequential_creates(target: Target, phase: str, samples: int, size: int, fs_type: str) -> Recorder:
    rec = Recorder()
    ids = await _create_many(target, phase, samples, size=size, fs_type=fs_type, in_flight=1, rec=rec)
    await _delete_many(target, ids, 1, Recorder())
    return rec


async def _list_all(target: Target, page_size: int) -> int:
    token, total = "", 0
    while True:
        resp = await target.client.list_volumes(page_size, token)
        total += len(resp.entries)
        token = resp.next_token
        if not token:
            return total


async def scale(target: Target, *, existing: int, samples: int, size: int, fs_type: str, page_size: int,
                in_flight: int) -> dict[str, Any]:
    """CreateVolume latency at 0 and at ``existing`` volumes; ListVolumes and GetCapacity at ``existing``."""
    before_count = await _list_all(target, page_size)
    at_zero = await _sequential_creates(target, "scale0", samples, size, fs_type)
    populate = Recorder()
    started = time.perf_counter()
    ids = await _create_many(target, "scalefill", existing, size=size, fs_type=fs_type, in_flight=in_flight,
                             rec=populate)
    fill_seconds = time.perf_counter() - started
    try:
        listing = Recorder()
        listed = 0
        for _ in range(5):
            listed = await listing.timed("ListVolumes(all pages)", lambda: _list_all(target, page_size)) or listed
            await listing.timed("ListVolumes(one call)", lambda: _list_all(target, 0))
        for _ in range(200):
            await listing.timed("GetCapacity", lambda: target.client.get_capacity(target.parameters))
        at_n = await _sequential_creates(target, "scaleN", samples, size, fs_type)
    finally:
        cleanup = Recorder()
        await _delete_many(target, ids, in_flight, cleanup)
    zero = Summary.of(at_zero.latencies.get("CreateVolume", []))
    loaded = Summary.of(at_n.latencies.get("CreateVolume", []))
    return {
        "volumes_before": before_count, "existing": len(ids), "listed": listed, "page_size": page_size,
        "fill_rpcs_per_second": round(len(ids) / fill_seconds, 1) if fill_seconds else 0,
        "create_at_0": asdict(zero), "create_at_existing": asdict(loaded),
        "create_p50_ratio": round(loaded.p50_ms / zero.p50_ms, 2) if zero.p50_ms else None,
        "latency": listing.summaries(),
        "errors": {**populate.error_table(), **listing.error_table(), **cleanup.error_table(),
                   **at_zero.error_table(), **at_n.error_table()},
    }


# ---------------------------------------------------------------- provisioning path


@dataclass
class Paths:
    staging: str
    target: str
    second_target: str


def paths_for(target: Target, name: str) -> Paths:
    root = os.path.join(target.work_dir, name)
    os.makedirs(os.path.join(root, "staging"), exist_ok=True)
    os.makedirs(os.path.join(root, "pods"), exist_ok=True)
    return Paths(staging=os.path.join(root, "staging"), target=os.path.join(root, "pods", "a"),
                 second_target=os.path.join(root, "pods", "b"))


async def bring_up(target: Target, rec: Recorder, name: str, *, size: int, cap: csi.VolumeCapability,
                   p: Paths) -> str | None:
    c = target.client
    started = time.perf_counter()
    resp = await rec.timed("CreateVolume", lambda: c.create_volume(create_request(target, name, size, cap)))
    if resp is None or resp.volume is None:
        return None
    vid = resp.volume.volume_id
    context: dict[str, str] = {}
    if target.controller_publish:
        published = await rec.timed("ControllerPublishVolume", lambda: c.controller_publish(
            csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=target.node_id, volume_capability=cap)))
        context = published or {}
    if target.node_stage:
        await rec.timed("NodeStageVolume", lambda: c.node_stage(csi.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=p.staging, volume_capability=cap, publish_context=context,
            volume_context=dict(resp.volume.volume_context))))  # type: ignore[union-attr]
    await rec.timed("NodePublishVolume", lambda: c.node_publish(_publish_req(target, vid, p.staging, p.target, cap)))
    rec.add("up (create → publish)", time.perf_counter() - started)
    return vid


def _publish_req(target: Target, vid: str, staging: str, path: str,
                 cap: csi.VolumeCapability) -> csi.NodePublishVolumeRequest:
    return csi.NodePublishVolumeRequest(volume_id=vid, staging_target_path=staging if target.node_stage else "",
                                        target_path=path, volume_capability=cap)


async def tear_down(target: Target, rec: Recorder, vid: str, p: Paths) -> None:
    c = target.client
    started = time.perf_counter()
    await rec.timed("NodeUnpublishVolume", lambda: c.node_unpublish(vid, p.target))
    if target.node_stage:
        await rec.timed("NodeUnstageVolume", lambda: c.node_unstage(vid, p.staging))
    if target.controller_publish:
        await rec.timed("ControllerUnpublishVolume", lambda: c.controller_unpublish(vid, target.node_id))
    await rec.timed("DeleteVolume", lambda: c.delete_volume(vid))
    rec.add("down (unpublish → delete)", time.perf_counter() - started)


async def node_calls(target: Target, rec: Recorder, vid: str, p: Paths, cap: csi.VolumeCapability, *,
                     stats_calls: int, pair_calls: int) -> None:
    """NodeGetVolumeStats on the published volume, then publish/unpublish pairs on a second target."""
    c = target.client
    for _ in range(stats_calls):
        await rec.timed("NodeGetVolumeStats", lambda: c.volume_stats(vid, p.target))
    for _ in range(pair_calls):
        started = time.perf_counter()
        await rec.timed("NodePublishVolume(2nd target)",
                        lambda: c.node_publish(_publish_req(target, vid, p.staging, p.second_target, cap)))
        await rec.timed("NodeUnpublishVolume(2nd target)", lambda: c.node_unpublish(vid, p.second_target))
        rec.add("NodePublish+NodeUnpublish pair", time.perf_counter() - started)


async def provision(target: Target, fs_type: str, *, iterations: int, size: int, stats_calls: int,
                    pair_calls: int) -> dict[str, Any]:
    """The full path a pod start and stop takes, ``iterations`` times, sequentially."""
    rec = Recorder()
    extra = Recorder()
    cap = mount_cap(fs_type)
    before = target.sample()
    for i in range(iterations):
        name = target.name(f"prov-{fs_type}", i)
        p = await anyio.to_thread.run_sync(paths_for, target, name)
        vid = await bring_up(target, rec, name, size=size, cap=cap, p=p)
        if vid is None:
            continue
        await node_calls(target, extra, vid, p, cap, stats_calls=stats_calls, pair_calls=pair_calls)
        await tear_down(target, rec, vid, p)
    after = target.sample()
    ops = rec.ok_count - len(rec.latencies.get("up (create → publish)", [])) * 2
    return with_cost({
        "fs_type": fs_type, "iterations": iterations, "size_bytes": size, "latency": rec.summaries(),
        "node_calls": extra.summaries(), "errors": {**rec.error_table(), **extra.error_table()},
    }, before, after, ops + extra.ok_count)
