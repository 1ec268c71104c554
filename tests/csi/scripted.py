"""A scripted in-memory backend and the driver's servicers over grpclib's in-memory channel.

The servicer tests (tests/csi/test_identity.py, test_controller.py, test_node.py, test_rpc.py, test_errors.py)
drive the real IdentityService, ControllerService and NodeService through generated stubs, as a CO would, with
a backend whose behaviour each test scripts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anyio
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor

from backends import errors
from backends.base import Backend, Capacity, Condition, Features, Volume, VolumeSpec
from backends.loopfile.options import LoopfileOptions
from backends.nodeops import NodeOps
from backends.pools import PoolSpec
from backends.system.testing import FakeRunner
from csi.config import DriverConfig, Mode
from csi.context import ServiceContext
from csi.controller import ControllerService
from csi.gen.csi import v1 as csi
from csi.identity import IdentityService
from csi.node import NodeService
from csi.rpc import Observer
from csi.server import DriverServer
from tests.support import connect

DRIVER = "localcsi.dev"
NODE = "n1"
MAX_VOLUMES = 12
#: The one pool of a driver configured by flags, as ``serve`` builds it.
POOLS = (PoolSpec("default", LoopfileOptions()),)


class ScriptedBackend:
    """An in-memory backend whose create_volume runs a test-supplied coroutine."""

    name: ClassVar[str] = "scripted"

    def __init__(self, on_create: Callable[[VolumeSpec], Any] | None = None, *,
                 features: Features | None = None) -> None:
        self.on_create = on_create
        self.volumes: dict[str, Volume] = {}
        self.healthy = True
        self.health_checks = 0
        self.lifecycle: list[str] = []
        self._features = features or Features(expansion=True)

    @property
    def features(self) -> Features:
        return self._features

    @property
    def node_id(self) -> str:
        return NODE

    async def lock_storage(self) -> None:
        self.lifecycle.append("lock")

    async def start(self) -> None:
        self.lifecycle.append("start")

    async def close(self) -> None:
        self.lifecycle.append("close")

    async def check_health(self) -> None:
        self.health_checks += 1
        if not self.healthy:
            raise errors.Unavailable("disk gone")

    async def create_volume(self, spec: VolumeSpec) -> Volume:
        if self.on_create is not None:
            await self.on_create(spec)
        vol = self.volumes.setdefault(spec.volume_id, Volume(spec.volume_id, spec.name, spec.required_bytes))
        return vol

    async def delete_volume(self, volume_id: str) -> None:
        self.volumes.pop(volume_id, None)

    async def get_volume(self, volume_id: str) -> Volume:
        try:
            return self.volumes[volume_id]
        except KeyError:
            raise errors.VolumeNotFound(volume_id) from None

    async def require_volume(self, volume_id: str) -> None:
        await self.get_volume(volume_id)

    async def reads_as_zeros(self, volume_id: str) -> bool:
        return False

    async def may_hold_data(self, volume_id: str) -> bool:
        return True

    async def volume_health(self, volume_id: str) -> Condition:
        return (await self.get_volume(volume_id)).condition

    async def list_volumes(self) -> list[Volume]:
        return [self.volumes[k] for k in sorted(self.volumes)]

    async def get_capacity(self, parameters: Mapping[str, str]) -> Capacity:
        return Capacity(100, 50, 1)

    async def expand_volume(self, volume_id: str, required_bytes: int, limit_bytes: int) -> int:
        return required_bytes

    async def publish_volume(self, volume_id: str, node_id: str, readonly: bool) -> Mapping[str, str]:
        await self.get_volume(volume_id)
        return {}

    async def unpublish_volume(self, volume_id: str, node_id: str) -> None: ...
    async def attach(self, volume_id: str, readonly: bool) -> str:
        return "/dev/null"

    async def detach(self, volume_id: str) -> None: ...
    async def device_path(self, volume_id: str) -> str | None:
        return None

    async def attached_devices(self) -> list[str]:
        return []

    async def refresh_device_size(self, volume_id: str) -> int:
        return 0

    async def volume_condition(self, volume_id: str) -> Condition:
        return Condition()

    async def create_snapshot(self, *args: Any) -> Any:
        raise errors.InvalidArgument("no")

    async def delete_snapshot(self, snapshot_id: str) -> None: ...
    async def get_snapshot(self, snapshot_id: str) -> Any:
        raise errors.SnapshotNotFound(snapshot_id)

    async def list_snapshots(self) -> list[Any]:
        return []


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def serve(backend: ScriptedBackend, mode: Mode = Mode.ALL, *, clock: Callable[[], float] = time.monotonic,
                kubelet_dirs: tuple[str, ...] = (), observer: Observer | None = None) -> AsyncIterator[Channel]:
    """The three servicers over ``backend`` (none in controller mode) on grpclib's in-memory channel."""
    storage: Backend | None = backend if mode is not Mode.CONTROLLER else None
    config = DriverConfig(DRIVER, NODE, "unix:///unused", POOLS, mode=mode, kubelet_dirs=kubelet_dirs,
                          max_volumes_per_node=MAX_VOLUMES)
    ctx = ServiceContext(config, backend.features, storage, observer=observer)
    services: list[Any] = [IdentityService(ctx, clock), ControllerService(ctx),
                           NodeService(ctx, NodeOps(backend, FakeRunner(lambda argv: (0, "", "")),
                                                    block_dir="/run/localcsi-unused", kubelet_dirs=kubelet_dirs))]
    async with anyio.create_task_group() as tg:
        ctx.supervisor.bind(tg)
        async with ChannelFor(services) as channel:
            yield channel
        tg.cancel_scope.cancel()


async def answers(path: Path) -> bool:
    try:
        async with connect(str(path)) as c:
            await c.identity.probe(csi.ProbeRequest(), timeout=5)
    except (OSError, GRPCError, TimeoutError):
        return False
    return True


async def wait_for_socket(path: Path) -> None:
    with anyio.fail_after(10):
        while not await answers(path):
            await anyio.sleep(0.02)


@asynccontextmanager
async def serving(path: Path, backend: ScriptedBackend, mode: Mode = Mode.ALL) -> AsyncIterator[str]:
    """A :class:`DriverServer` over ``backend`` on the unix socket ``path``; yields its endpoint."""
    config = DriverConfig(DRIVER, NODE, f"unix://{path}", POOLS, mode=mode)
    server = DriverServer(config, backend if mode.has_storage else None, FakeRunner(lambda argv: (1, "", "")))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.run(handle_signals=False))
        await wait_for_socket(path)
        yield f"unix://{path}"
        server.stop()
