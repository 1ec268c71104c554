"""Service-level tests over grpclib's in-memory channel with a scripted backend.

They pin what the wrapper guarantees whatever the backend does: every failure
maps to a documented code (never UNKNOWN), a busy volume answers ABORTED, and a
mutation whose caller gave up still runs to the end so the retry finds it done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Status
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
from tests.support import create_request

pytestmark = pytest.mark.anyio


class ScriptedBackend:
    """An in-memory backend whose create_volume runs a test-supplied coroutine."""

    name: ClassVar[str] = "scripted"

    def __init__(self, on_create: Callable[[VolumeSpec], Any] | None = None) -> None:
        self.on_create = on_create
        self.volumes: dict[str, Volume] = {}
        self.healthy = True

    @property
    def features(self) -> Features:
        return Features(expansion=True)

    @property
    def node_id(self) -> str:
        return "n1"

    async def lock_storage(self) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def check_health(self) -> None:
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

    async def refresh_device_size(self, volume_id: str) -> int:
        return 0

    async def attached_devices(self) -> list[str]:
        return []

    async def volume_condition(self, volume_id: str) -> Condition:
        return Condition()

    async def create_snapshot(self, *args: Any) -> Any:
        raise errors.InvalidArgument("no")

    async def delete_snapshot(self, snapshot_id: str) -> None: ...
    async def get_snapshot(self, snapshot_id: str) -> Any:
        raise errors.SnapshotNotFound(snapshot_id)

    async def list_snapshots(self) -> list[Any]:
        return []


@asynccontextmanager
async def serve(backend: ScriptedBackend, mode: Mode = Mode.ALL) -> AsyncIterator[Channel]:
    storage: Backend | None = backend if mode is not Mode.CONTROLLER else None
    config = DriverConfig("localcsi.dev", "n1", "unix:///unused", (PoolSpec("default", LoopfileOptions()),), mode=mode)
    ctx = ServiceContext(config, backend.features, storage)
    services: list[Any] = [IdentityService(ctx), ControllerService(ctx),
                           NodeService(ctx, NodeOps(backend, FakeRunner(lambda argv: (0, "", "")),
                                                    block_dir="/run/localcsi-unused"))]
    async with anyio.create_task_group() as tg:
        ctx.supervisor.bind(tg)
        async with ChannelFor(services) as channel:
            yield channel
        tg.cancel_scope.cancel()


async def test_unexpected_exception_is_internal_not_unknown() -> None:
    async def boom(spec: VolumeSpec) -> None:
        raise ZeroDivisionError("oops")

    async with serve(ScriptedBackend(boom)) as ch:
        with pytest.raises(GRPCError) as info:
            await csi.ControllerStub(ch).create_volume(create_request("pvc-x"))
    assert info.value.status == Status.INTERNAL
    assert "ZeroDivisionError" in (info.value.message or "")


@pytest.mark.parametrize(("exc", "status"), [
    (errors.CapacityExhausted("full"), Status.RESOURCE_EXHAUSTED),
    (errors.VolumeConflict("other size"), Status.ALREADY_EXISTS),
    (errors.OutOfRange("too small"), Status.OUT_OF_RANGE),
    (errors.DeviceNotBlank("has ext4"), Status.FAILED_PRECONDITION),
    (errors.Unavailable("gone"), Status.UNAVAILABLE),
    (errors.SystemFailure("mkfs died"), Status.INTERNAL),
])
async def test_domain_errors_map_through_the_table(exc: Exception, status: Status) -> None:
    async def fail(spec: VolumeSpec) -> None:
        raise exc

    async with serve(ScriptedBackend(fail)) as ch:
        with pytest.raises(GRPCError) as info:
            await csi.ControllerStub(ch).create_volume(create_request("pvc-x"))
    assert info.value.status == status
    assert info.value.message == str(exc)


async def test_busy_volume_answers_aborted_and_torn_call_finishes() -> None:
    release = anyio.Event()
    finished: list[str] = []

    async def slow(spec: VolumeSpec) -> None:
        await release.wait()
        finished.append(spec.name)

    backend = ScriptedBackend(slow)
    async with serve(backend) as ch:
        stub = csi.ControllerStub(ch)
        with pytest.raises(TimeoutError):  # grpclib's client-side deadline
            await stub.create_volume(create_request("pvc-slow"), timeout=0.2)
        with pytest.raises(GRPCError) as busy:
            await stub.create_volume(create_request("pvc-slow"))
        assert busy.value.status == Status.ABORTED
        release.set()
        with anyio.fail_after(5):
            while not finished:
                await anyio.sleep(0.01)
        backend.on_create = None
        again = await stub.create_volume(create_request("pvc-slow"))
    assert finished == ["pvc-slow"]
    assert again.volume is not None and len(backend.volumes) == 1


async def test_probe_reports_backend_health() -> None:
    backend = ScriptedBackend()
    async with serve(backend) as ch:
        assert (await csi.IdentityStub(ch).probe(csi.ProbeRequest())).ready is True
        backend.healthy = False
        await anyio.sleep(1.1)  # past the moment a healthy answer is reused
        assert (await csi.IdentityStub(ch).probe(csi.ProbeRequest())).ready is False
        backend.healthy = True
        assert (await csi.IdentityStub(ch).probe(csi.ProbeRequest())).ready is True


async def test_controller_mode_attaches_by_context_and_defers_expansion() -> None:
    async with serve(ScriptedBackend(), Mode.CONTROLLER) as ch:
        stub = csi.ControllerStub(ch)
        caps = await stub.controller_get_capabilities(csi.ControllerGetCapabilitiesRequest())
        types = {c.rpc.type for c in caps.capabilities if c.rpc}
        assert csi.ControllerServiceCapabilityRpcType.CREATE_DELETE_VOLUME not in types
        assert csi.ControllerServiceCapabilityRpcType.PUBLISH_UNPUBLISH_VOLUME in types
        vid = "lcv-" + "1" * 32
        resp = await stub.controller_publish_volume(csi.ControllerPublishVolumeRequest(
            volume_id=vid, node_id="n7", volume_capability=create_request("x").volume_capabilities[0]))
        assert resp.publish_context == {"localcsi.dev/node": "n7"}
        grow = await stub.controller_expand_volume(csi.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=1 << 30)))
        assert grow.node_expansion_required and grow.capacity_bytes == 1 << 30


async def test_list_volumes_pages_in_order() -> None:
    backend = ScriptedBackend()
    async with serve(backend) as ch:
        stub = csi.ControllerStub(ch)
        for i in range(7):
            await stub.create_volume(create_request(f"pvc-{i}"))
        seen, token, pages = [], "", 0
        while True:
            resp = await stub.list_volumes(csi.ListVolumesRequest(max_entries=3, starting_token=token))
            seen += [e.volume.volume_id for e in resp.entries if e.volume]
            pages += 1
            token = resp.next_token
            if not token:
                break
    assert seen == sorted(backend.volumes) and pages == 3


async def test_get_capacity_accepts_the_provisioners_mode_less_capability() -> None:
    """external-provisioner's capacity controller sends the access type with access mode UNKNOWN."""
    async with serve(ScriptedBackend()) as ch:
        cap = csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type="ext4"),
                                   access_mode=csi.VolumeCapabilityAccessMode())
        resp = await csi.ControllerStub(ch).get_capacity(csi.GetCapacityRequest(
            volume_capabilities=[cap], accessible_topology=csi.Topology(
                segments={"topology.localcsi.dev/node": "n1"})))
        assert (resp.available_capacity, resp.maximum_volume_size) == (100, 50)
        ntfs = csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type="ntfs"))
        none = await csi.ControllerStub(ch).get_capacity(csi.GetCapacityRequest(volume_capabilities=[ntfs]))
        assert none.available_capacity == 0
