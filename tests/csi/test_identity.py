"""CSI Identity service (csi/identity.py): who the plugin is, what it advertises, whether it is ready."""

from __future__ import annotations

import pytest

from backends.base import Features
from csi.capabilities import plugin_capabilities
from csi.config import Mode
from csi.gen.csi import v1 as csi
from csi.identity import HEALTH_CACHE_SECONDS
from tests.csi.scripted import DRIVER, Clock, ScriptedBackend, serve

pytestmark = pytest.mark.anyio
Service = csi.PluginCapabilityServiceType


async def test_probe_reports_backend_health() -> None:
    backend, clock = ScriptedBackend(), Clock()
    async with serve(backend, clock=clock) as ch:
        probe = csi.IdentityStub(ch).probe
        assert (await probe(csi.ProbeRequest())).ready is True
        backend.healthy = False
        assert (await probe(csi.ProbeRequest())).ready is True  # a healthy answer holds for a moment: not asked
        assert backend.health_checks == 1
        clock.advance(HEALTH_CACHE_SECONDS)  # past the moment a healthy answer is reused
        assert (await probe(csi.ProbeRequest())).ready is False
        backend.healthy = True
        assert (await probe(csi.ProbeRequest())).ready is True  # an unhealthy answer is never reused
        assert backend.health_checks == 3


async def test_controller_mode_is_ready_without_storage() -> None:
    backend = ScriptedBackend()
    backend.healthy = False  # not this instance's: a controller-mode driver holds no storage
    async with serve(backend, Mode.CONTROLLER) as ch:
        assert (await csi.IdentityStub(ch).probe(csi.ProbeRequest())).ready is True
    assert backend.health_checks == 0


@pytest.mark.parametrize("mode", list(Mode))
async def test_plugin_info_names_the_driver_backend_and_mode(mode: Mode) -> None:
    async with serve(ScriptedBackend(), mode) as ch:
        info = await csi.IdentityStub(ch).get_plugin_info(csi.GetPluginInfoRequest())
    assert (info.name, info.vendor_version) == (DRIVER, "0.1.0")
    assert info.manifest == {"backend": "loopfile", "mode": mode.value, "pools": "default=loopfile"}


@pytest.mark.parametrize("expansion", [True, False])
async def test_plugin_capabilities_follow_the_features_and_the_mode(expansion: bool) -> None:
    for mode in Mode:
        async with serve(ScriptedBackend(features=Features(expansion=expansion)), mode) as ch:
            reply = await csi.IdentityStub(ch).get_plugin_capabilities(csi.GetPluginCapabilitiesRequest())
        assert reply.capabilities == plugin_capabilities(Features(expansion=expansion), mode)
        services = {c.service.type for c in reply.capabilities if c.service is not None}
        assert (Service.CONTROLLER_SERVICE in services) is mode.serves_controller
        assert Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in services
        assert any(c.volume_expansion is not None for c in reply.capabilities) is expansion
