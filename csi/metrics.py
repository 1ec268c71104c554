"""Prometheus metrics: per-RPC counts and latencies, and backend state read at scrape time.

:class:`DriverMetrics` is the :class:`csi.rpc.Observer` the RPC wrapper calls
once per finished call; it only bumps in-memory counters, so it costs the RPC
path a few microseconds.

Backend figures (capacity, volume counts by condition, each labelled with its
``pool``; the loop devices this driver attached) are *not* polled: each scrape asks the backend for them
(``list_volumes`` with each volume's health, ``get_capacity``,
``attached_devices``), so an idle driver does no work for metrics. Only the
backend's own devices are counted, never another user's loop devices.

The HTTP endpoint is a deliberately tiny HTTP/1.0 responder on the driver's
own event loop (anyio TCP listener): it answers ``GET /metrics`` and nothing
else, every read and the backend snapshot have a timeout, and rendering the
text format is pure CPU work of well under a millisecond.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import anyio
from anyio.abc import SocketStream, TaskStatus
from grpclib.const import Status
from loguru import logger

from backends.base import Backend
from backends.errors import BackendError, InvalidArgument
from backends.pools import DEFAULT_POOL, Pools
from backends.system import loop

if TYPE_CHECKING:  # prometheus_client (3 MiB resident) is imported only by a driver that serves metrics
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

#: Latency buckets from Probe (sub-millisecond) to mkfs of a large volume (tens of seconds).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0,
)
#: How long a scrape waits for the backend before answering without backend figures.
SNAPSHOT_TIMEOUT_SECONDS = 5.0
#: How long a client may take to send its request head.
REQUEST_TIMEOUT_SECONDS = 5.0
MAX_REQUEST_BYTES = 8192


@dataclass(frozen=True)
class PoolFigures:
    """What one scrape learned of one pool (a driver configured by flags has one, ``default``)."""

    name: str
    up: bool
    healthy_volumes: int = 0
    abnormal_volumes: int = 0
    provisioned_bytes: int = 0
    available_bytes: int = 0
    maximum_volume_bytes: int = 0


@dataclass(frozen=True)
class BackendSnapshot:
    """What one scrape learned from the backend: each pool's figures, and this driver's loop devices."""

    up: bool
    pools: tuple[PoolFigures, ...] = ()
    loop_devices: int = 0


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port); an empty host listens on every address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address must be HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


async def _pool_figures(name: str, backend: Backend) -> PoolFigures:
    try:
        volumes = await backend.list_volumes()
        capacity = await backend.get_capacity({})
    except BackendError as exc:  # this pool cannot answer now; the others still can
        logger.warning("metrics: pool {} could not be read: {}", name, exc.message)
        return PoolFigures(name, up=False)
    abnormal = sum(1 for v in volumes if v.condition.abnormal)
    return PoolFigures(name, up=True, healthy_volumes=len(volumes) - abnormal, abnormal_volumes=abnormal,
                       provisioned_bytes=sum(v.capacity_bytes for v in volumes),
                       available_bytes=capacity.available_bytes, maximum_volume_bytes=capacity.maximum_volume_bytes)


async def take_snapshot(backend: Backend | None) -> BackendSnapshot:
    """Backend figures for one scrape, pool by pool; ``up=False`` when the backend cannot answer at all."""
    if backend is None:
        return BackendSnapshot(up=False)
    try:
        with anyio.fail_after(SNAPSHOT_TIMEOUT_SECONDS):
            if isinstance(backend, Pools):
                pools = tuple([await _pool_figures(p.name, p.backend) if p.started else PoolFigures(p.name, up=False)
                               for p in backend.pools()])
            else:
                pools = (await _pool_figures(DEFAULT_POOL, backend),)
            loops = sum(1 for device in await backend.attached_devices() if _is_loop_device(device))
    except Exception as exc:  # a scrape must still answer; the failure shows as backend_up 0
        logger.warning("metrics: backend snapshot failed: {}", exc)
        return BackendSnapshot(up=False)
    return BackendSnapshot(up=any(p.up for p in pools), pools=pools, loop_devices=loops)


def _is_loop_device(path: str) -> bool:
    try:
        loop.loop_number(path)
    except InvalidArgument:
        return False
    return True


class _BackendCollector:
    """A prometheus_client collector: yields the snapshot taken just before rendering (no I/O in ``collect``)."""

    def __init__(self, driver: str, backend: str, version: str) -> None:
        self.labels = {"driver": driver, "backend": backend, "version": version}
        self.snapshot = BackendSnapshot(up=False)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        s = self.snapshot
        info = InfoMetricFamily("localcsi_build", "Driver name, backend and version.")
        info.add_metric([], self.labels)
        yield info
        yield GaugeMetricFamily("localcsi_backend_up", "1 when the last scrape could read the backend (a pool).",
                                value=1 if s.up else 0)
        if not s.up:
            return
        up = GaugeMetricFamily("localcsi_pool_up", "1 when the last scrape could read the pool.", labels=["pool"])
        volumes = GaugeMetricFamily("localcsi_volumes", "Volumes on this node by pool and condition.",
                                    labels=["pool", "condition"])
        per_pool = {name: GaugeMetricFamily(name, text, labels=["pool"]) for name, text in (
            ("localcsi_volumes_provisioned_bytes", "Sum of the capacities of the pool's volumes."),
            ("localcsi_capacity_available_bytes", "What new volumes of the pool could still take."),
            ("localcsi_capacity_maximum_volume_bytes", "The largest volume the pool can create now."))}
        for pool in s.pools:
            up.add_metric([pool.name], 1 if pool.up else 0)
            if not pool.up:
                continue
            volumes.add_metric([pool.name, "healthy"], pool.healthy_volumes)
            volumes.add_metric([pool.name, "abnormal"], pool.abnormal_volumes)
            per_pool["localcsi_volumes_provisioned_bytes"].add_metric([pool.name], pool.provisioned_bytes)
            per_pool["localcsi_capacity_available_bytes"].add_metric([pool.name], pool.available_bytes)
            per_pool["localcsi_capacity_maximum_volume_bytes"].add_metric([pool.name], pool.maximum_volume_bytes)
        yield up
        yield volumes
        yield from per_pool.values()
        yield GaugeMetricFamily("localcsi_loop_devices_attached",
                                "Loop devices this driver attached for its volumes (no other user's).",
                                value=s.loop_devices)


class DriverMetrics:
    """The driver's metrics registry; an RPC :class:`~csi.rpc.Observer` and the scrape endpoint."""

    def __init__(self, backend: Backend | None, *, driver: str, backend_name: str, version: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.backend = backend
        self.registry = CollectorRegistry(auto_describe=False)
        self.calls = Counter("localcsi_rpc", "Finished CSI calls by RPC and gRPC status code.",
                             ["rpc", "code"], registry=self.registry)
        self.latency = Histogram("localcsi_rpc_duration_seconds", "CSI call latency by RPC.", ["rpc"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self._backend_collector = _BackendCollector(driver, backend_name, version)
        self.registry.register(cast("Collector", self._backend_collector))

    # -- Observer -----------------------------------------------------------
    def rpc_finished(self, rpc: str, status: Status, seconds: float) -> None:
        self.calls.labels(rpc=rpc, code=status.name).inc()
        self.latency.labels(rpc=rpc).observe(seconds)

    # -- exposition ---------------------------------------------------------
    async def render(self) -> bytes:
        """The text exposition format, with fresh backend figures."""
        from prometheus_client.exposition import generate_latest

        snapshot = await take_snapshot(self.backend)
        # No await between storing the snapshot and rendering: concurrent scrapes cannot mix.
        self._backend_collector.snapshot = snapshot
        return generate_latest(self.registry)

    async def serve(self, address: str, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``address`` until cancelled; reports the bound port through ``task_status``."""
        host, port = parse_address(address)
        listener = await anyio.create_tcp_listener(local_host=host or None, local_port=port, reuse_port=False)
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio typed attribute
        logger.info("serving metrics on http://{}:{}/metrics", host or "0.0.0.0", bound)  # noqa: S104
        task_status.started(bound)
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(REQUEST_TIMEOUT_SECONDS):
                    head = await _read_head(stream)
                method, _, rest = head.partition(b" ")
                path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
                if method not in (b"GET", b"HEAD"):
                    await _respond(stream, 405, "Method Not Allowed", b"only GET\n", "text/plain")
                elif path != b"/metrics":
                    await _respond(stream, 404, "Not Found", b"metrics are at /metrics\n", "text/plain")
                else:
                    from prometheus_client.exposition import CONTENT_TYPE_LATEST

                    body = await self.render()
                    await _respond(stream, 200, "OK", b"" if method == b"HEAD" else body, CONTENT_TYPE_LATEST)
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError, ValueError) as exc:
                logger.debug("metrics request dropped: {}", exc)


async def _read_head(stream: SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        data += await stream.receive(4096)
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request head too large")
    return data.split(b"\n", 1)[0].strip()


async def _respond(stream: SocketStream, code: int, reason: str, body: bytes, content_type: str) -> None:
    head = (f"HTTP/1.0 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    await stream.send(head + body)
