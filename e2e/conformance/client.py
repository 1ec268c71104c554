"""gRPC plumbing: a channel to the endpoint, the three service stubs, and what the plugin advertises."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import betterproto2
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi

CRpc = csi.ControllerServiceCapabilityRpcType
NRpc = csi.NodeServiceCapabilityRpcType
PService = csi.PluginCapabilityServiceType


def open_channel(endpoint: str) -> Channel:
    """``unix:///path/csi.sock`` or ``tcp://host:port`` (a bare path counts as unix)."""
    if endpoint.startswith("/"):
        return Channel(path=endpoint)
    parts = urlsplit(endpoint)
    if parts.scheme == "unix":
        path = parts.path or parts.netloc
        if not path:
            raise ValueError(f"no socket path in {endpoint!r}")
        return Channel(path=path)
    if parts.scheme == "tcp" and parts.hostname and parts.port:
        return Channel(host=parts.hostname, port=parts.port)
    raise ValueError(f"unsupported endpoint {endpoint!r}: use unix:///path or tcp://host:port")


@dataclass(frozen=True)
class Client:
    identity: csi.IdentityStub
    controller: csi.ControllerStub
    node: csi.NodeStub
    timeout: float


@contextlib.asynccontextmanager
async def connect(endpoint: str, rpc_timeout: float) -> AsyncIterator[Client]:
    channel = open_channel(endpoint)
    try:
        yield Client(csi.IdentityStub(channel), csi.ControllerStub(channel), csi.NodeStub(channel), rpc_timeout)
    finally:
        channel.close()


@dataclass(frozen=True)
class Capabilities:
    """What the plugin says it can do; specs for anything else are skipped."""

    plugin_services: frozenset[PService]
    online_expansion: bool
    offline_expansion: bool
    controller: frozenset[CRpc]
    node: frozenset[NRpc]
    node_service: bool

    @property
    def has_controller(self) -> bool:
        return PService.CONTROLLER_SERVICE in self.plugin_services

    @property
    def has_topology(self) -> bool:
        return PService.VOLUME_ACCESSIBILITY_CONSTRAINTS in self.plugin_services


def _plugin_caps(caps: list[csi.PluginCapability]) -> tuple[frozenset[PService], bool, bool]:
    services: set[PService] = set()
    online = offline = False
    for cap in caps:
        kind = betterproto2.which_one_of(cap, "type")[0]
        if kind == "service" and cap.service is not None:
            services.add(cap.service.type)
        elif kind == "volume_expansion" and cap.volume_expansion is not None:
            online |= cap.volume_expansion.type == csi.PluginCapabilityVolumeExpansionType.ONLINE
            offline |= cap.volume_expansion.type == csi.PluginCapabilityVolumeExpansionType.OFFLINE
    return frozenset(services), online, offline


def is_unimplemented(exc: GRPCError) -> bool:
    """UNIMPLEMENTED, as any client sees it.

    A grpclib server answers an unknown method with a trailers-only response that
    carries no content-type; grpclib's client checks content-type first and reports
    UNKNOWN "Missing content-type header" instead of the grpc-status it was sent.
    """
    if exc.status is Status.UNIMPLEMENTED:
        return True
    return exc.status is Status.UNKNOWN and exc.message == "Missing content-type header"


async def fetch_capabilities(client: Client) -> Capabilities:
    """Ask all three services; a service the plugin does not serve contributes nothing."""
    plugin = await client.identity.get_plugin_capabilities(csi.GetPluginCapabilitiesRequest(), timeout=client.timeout)
    services, online, offline = _plugin_caps(plugin.capabilities)
    controller: frozenset[CRpc] = frozenset()
    if PService.CONTROLLER_SERVICE in services:
        reply = await client.controller.controller_get_capabilities(
            csi.ControllerGetCapabilitiesRequest(), timeout=client.timeout
        )
        controller = frozenset(c.rpc.type for c in reply.capabilities if c.rpc is not None)
    try:
        node_reply = await client.node.node_get_capabilities(csi.NodeGetCapabilitiesRequest(), timeout=client.timeout)
    except GRPCError as exc:
        if not is_unimplemented(exc):
            raise
        return Capabilities(services, online, offline, controller, frozenset(), node_service=False)
    node = frozenset(c.rpc.type for c in node_reply.capabilities if c.rpc is not None)
    return Capabilities(services, online, offline, controller, node, node_service=True)
