"""Identity service: GetPluginInfo, GetPluginCapabilities, Probe."""

from __future__ import annotations

import re

import betterproto2
import pytest

from csi.gen.csi import v1 as csi
from e2e.conformance.harness import Harness

pytestmark = pytest.mark.anyio

# Spec: the name MUST follow domain name notation, be at most 63 characters,
# and begin and end with an alphanumeric character.
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]{0,61}[A-Za-z0-9])?$")


async def test_get_plugin_info_names_the_plugin_and_its_version(h: Harness) -> None:
    info = await h.client.identity.get_plugin_info(csi.GetPluginInfoRequest(), timeout=h.client.timeout)
    assert info.name, "name is REQUIRED"
    assert _PLUGIN_NAME.match(info.name), f"name {info.name!r} is not domain-name notation of at most 63 characters"
    assert info.vendor_version, "vendor_version is REQUIRED"


async def test_get_plugin_info_is_stable(h: Harness) -> None:
    first = await h.client.identity.get_plugin_info(csi.GetPluginInfoRequest(), timeout=h.client.timeout)
    second = await h.client.identity.get_plugin_info(csi.GetPluginInfoRequest(), timeout=h.client.timeout)
    assert (first.name, first.vendor_version) == (second.name, second.vendor_version)


async def test_get_plugin_capabilities_are_well_formed(h: Harness) -> None:
    reply = await h.client.identity.get_plugin_capabilities(csi.GetPluginCapabilitiesRequest(),
                                                            timeout=h.client.timeout)
    for cap in reply.capabilities:
        kind, value = betterproto2.which_one_of(cap, "type")
        assert kind in {"service", "volume_expansion"}, f"capability without a known type: {cap!r}"
        assert value is not None
        if kind == "service":
            assert cap.service is not None
            assert cap.service.type != csi.PluginCapabilityServiceType.UNKNOWN, "service type UNKNOWN advertised"
        else:
            assert cap.volume_expansion is not None
            assert cap.volume_expansion.type != csi.PluginCapabilityVolumeExpansionType.UNKNOWN


async def test_probe_answers_ok(h: Harness) -> None:
    reply = await h.client.identity.probe(csi.ProbeRequest(), timeout=h.client.timeout)
    # ready is an optional BoolValue: unset or true both mean the plugin is ready; the suite is
    # started against a running plugin, so an explicit false here means it never became ready.
    assert reply.ready is None or reply.ready is True, "Probe reports the plugin not ready"
