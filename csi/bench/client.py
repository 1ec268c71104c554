"""The benchmark's CSI client: one call interface over grpclib or grpcio.

Both transports send our generated betterproto2 messages: grpclib through its
own codec, grpcio through ``bytes(message)`` / ``Type().parse(data)`` on a
generic unary-unary call, so no grpcio stubs are generated. grpclib, the
default, needs nothing beyond the driver's dependencies (``pip install .``);
grpcio is optional (the dev extra has it): the client the reference figures
were measured with, ~3× cheaper per call on the client side, used only when
asked for.
Errors from either become :class:`CallFailed` with the gRPC code's name.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import betterproto2

from csi.config import Endpoint
from csi.gen.csi import v1 as csi

R = TypeVar("R", bound=betterproto2.Message)


class CallFailed(Exception):
    """A CSI call answered with a non-OK status (``code`` is the status name, e.g. ``ABORTED``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Transport(Protocol):
    async def call(self, route: str, request: betterproto2.Message, response_type: type[R], seconds: float) -> R:
        """One unary call with a deadline of ``seconds``."""

    def close(self) -> None: ...


class GrpclibTransport:
    def __init__(self, endpoint: str) -> None:
        from grpclib.client import Channel

        ep = Endpoint.parse(endpoint)
        self.channel = Channel(path=ep.path) if ep.path else Channel(host=ep.host, port=ep.port)

    async def call(self, route: str, request: betterproto2.Message, response_type: type[R], seconds: float) -> R:
        from grpclib.const import Cardinality
        from grpclib.exceptions import GRPCError, StreamTerminatedError

        try:
            async with self.channel.request(route, Cardinality.UNARY_UNARY, type(request), response_type,
                                            timeout=seconds) as stream:
                await stream.send_message(request, end=True)
                response = await stream.recv_message()
        except GRPCError as exc:
            raise CallFailed(exc.status.name, exc.message or "") from exc
        except TimeoutError as exc:
            raise CallFailed("DEADLINE_EXCEEDED", "client deadline") from exc
        except (OSError, StreamTerminatedError) as exc:  # no socket yet, refused, connection lost
            raise CallFailed("UNAVAILABLE", str(exc)) from exc
        if response is None:
            raise CallFailed("UNKNOWN", "empty response")
        return response

    def close(self) -> None:
        self.channel.close()


class GrpcioTransport:
    def __init__(self, endpoint: str) -> None:
        import grpc.aio  # type: ignore[import-untyped]

        ep = Endpoint.parse(endpoint)
        target = f"unix://{ep.path}" if ep.path else f"{ep.host}:{ep.port}"
        self.channel = grpc.aio.insecure_channel(target)
        self._calls: dict[str, Any] = {}

    async def call(self, route: str, request: betterproto2.Message, response_type: type[R], seconds: float) -> R:
        import grpc

        method = self._calls.get(route)
        if method is None:
            method = self.channel.unary_unary(
                route, request_serializer=bytes, response_deserializer=lambda data: response_type().parse(data)
            )
            self._calls[route] = method
        try:
            return await method(request, timeout=seconds)  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as exc:
            raise CallFailed(exc.code().name, exc.details() or "") from exc

    def close(self) -> None:
        # grpc.aio's close() is a coroutine; closing with the process is enough for a one-shot benchmark.
        self._calls.clear()

    async def aclose(self) -> None:
        await self.channel.close()


def open_transport(endpoint: str, client: str) -> Transport:
    if client == "grpcio":
        return GrpcioTransport(endpoint)
    if client == "grpclib":
        return GrpclibTransport(endpoint)
    raise ValueError(f"unknown client {client!r}: grpcio or grpclib")


class CsiClient:
    """Typed CSI calls over a :class:`Transport`, each with the same deadline."""

    def __init__(self, transport: Transport, timeout: float = 120.0) -> None:
        self.transport = transport
        self.timeout = timeout

    async def _call(self, route: str, request: betterproto2.Message, response_type: type[R]) -> R:
        return await self.transport.call(route, request, response_type, self.timeout)

    async def probe(self) -> csi.ProbeResponse:
        return await self._call("/csi.v1.Identity/Probe", csi.ProbeRequest(), csi.ProbeResponse)

    async def plugin_info(self) -> csi.GetPluginInfoResponse:
        return await self._call("/csi.v1.Identity/GetPluginInfo", csi.GetPluginInfoRequest(),
                                csi.GetPluginInfoResponse)

    async def controller_capabilities(self) -> set[int]:
        resp = await self._call("/csi.v1.Controller/ControllerGetCapabilities",
                                csi.ControllerGetCapabilitiesRequest(), csi.ControllerGetCapabilitiesResponse)
        return {int(c.rpc.type) for c in resp.capabilities if c.rpc is not None}

    async def node_capabilities(self) -> set[int]:
        resp = await self._call("/csi.v1.Node/NodeGetCapabilities", csi.NodeGetCapabilitiesRequest(),
                                csi.NodeGetCapabilitiesResponse)
        return {int(c.rpc.type) for c in resp.capabilities if c.rpc is not None}

    async def node_info(self) -> csi.NodeGetInfoResponse:
        return await self._call("/csi.v1.Node/NodeGetInfo", csi.NodeGetInfoRequest(), csi.NodeGetInfoResponse)

    async def create_volume(self, request: csi.CreateVolumeRequest) -> csi.CreateVolumeResponse:
        return await self._call("/csi.v1.Controller/CreateVolume", request, csi.CreateVolumeResponse)

    async def delete_volume(self, volume_id: str) -> None:
        await self._call("/csi.v1.Controller/DeleteVolume", csi.DeleteVolumeRequest(volume_id=volume_id),
                         csi.DeleteVolumeResponse)

    async def controller_publish(self, request: csi.ControllerPublishVolumeRequest) -> dict[str, str]:
        resp = await self._call("/csi.v1.Controller/ControllerPublishVolume", request,
                                csi.ControllerPublishVolumeResponse)
        return dict(resp.publish_context)

    async def controller_unpublish(self, volume_id: str, node_id: str) -> None:
        await self._call("/csi.v1.Controller/ControllerUnpublishVolume",
                         csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node_id),
                         csi.ControllerUnpublishVolumeResponse)

    async def list_volumes(self, max_entries: int, starting_token: str) -> csi.ListVolumesResponse:
        return await self._call("/csi.v1.Controller/ListVolumes",
                                csi.ListVolumesRequest(max_entries=max_entries, starting_token=starting_token),
                                csi.ListVolumesResponse)

    async def get_capacity(self, parameters: dict[str, str]) -> csi.GetCapacityResponse:
        return await self._call("/csi.v1.Controller/GetCapacity", csi.GetCapacityRequest(parameters=parameters),
                                csi.GetCapacityResponse)

    async def node_stage(self, request: csi.NodeStageVolumeRequest) -> None:
        await self._call("/csi.v1.Node/NodeStageVolume", request, csi.NodeStageVolumeResponse)

    async def node_unstage(self, volume_id: str, staging_target_path: str) -> None:
        await self._call("/csi.v1.Node/NodeUnstageVolume",
                         csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging_target_path),
                         csi.NodeUnstageVolumeResponse)

    async def node_publish(self, request: csi.NodePublishVolumeRequest) -> None:
        await self._call("/csi.v1.Node/NodePublishVolume", request, csi.NodePublishVolumeResponse)

    async def node_unpublish(self, volume_id: str, target_path: str) -> None:
        await self._call("/csi.v1.Node/NodeUnpublishVolume",
                         csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target_path),
                         csi.NodeUnpublishVolumeResponse)

    async def volume_stats(self, volume_id: str, volume_path: str) -> csi.NodeGetVolumeStatsResponse:
        return await self._call("/csi.v1.Node/NodeGetVolumeStats",
                                csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=volume_path),
                                csi.NodeGetVolumeStatsResponse)
