"""What each combination of backend features and serving mode advertises (csi/capabilities.py)."""

from __future__ import annotations

import itertools

import pytest

from backends.base import Features
from csi.capabilities import CRpc, NRpc, controller_rpcs, node_rpcs, plugin_capabilities
from csi.config import Mode
from csi.gen.csi import v1 as csi

BASE_CONTROLLER = {
    CRpc.CREATE_DELETE_VOLUME, CRpc.PUBLISH_UNPUBLISH_VOLUME, CRpc.LIST_VOLUMES, CRpc.GET_CAPACITY,
    CRpc.PUBLISH_READONLY, CRpc.LIST_VOLUMES_PUBLISHED_NODES, CRpc.VOLUME_CONDITION, CRpc.GET_VOLUME,
    CRpc.SINGLE_NODE_MULTI_WRITER,
}
BASE_NODE = {NRpc.STAGE_UNSTAGE_VOLUME, NRpc.GET_VOLUME_STATS, NRpc.VOLUME_CONDITION, NRpc.SINGLE_NODE_MULTI_WRITER}
SNAPSHOTS = {CRpc.CREATE_DELETE_SNAPSHOT, CRpc.LIST_SNAPSHOTS, CRpc.GET_SNAPSHOT}
COMBINATIONS = [Features(expansion=e, snapshots=s, clones=c) for e, s, c in itertools.product([False, True], repeat=3)]


def label(features: Features) -> str:
    return "-".join(name for name in ("expansion", "snapshots", "clones") if getattr(features, name)) or "basic"


@pytest.mark.parametrize("features", COMBINATIONS, ids=label)
def test_all_mode_advertises_the_basics_and_exactly_the_features(features: Features) -> None:
    expected = set(BASE_CONTROLLER)
    expected |= {CRpc.EXPAND_VOLUME} if features.expansion else set()
    expected |= SNAPSHOTS if features.snapshots else set()
    expected |= {CRpc.CLONE_VOLUME} if features.clones else set()
    rpcs = controller_rpcs(features, Mode.ALL)
    assert set(rpcs) == expected and len(rpcs) == len(expected)
    assert set(node_rpcs(features)) == BASE_NODE | ({NRpc.EXPAND_VOLUME} if features.expansion else set())


@pytest.mark.parametrize("features", COMBINATIONS, ids=label)
def test_controller_mode_offers_only_what_the_attacher_and_resizer_call(features: Features) -> None:
    expected = {CRpc.PUBLISH_UNPUBLISH_VOLUME, CRpc.SINGLE_NODE_MULTI_WRITER}
    assert set(controller_rpcs(features, Mode.CONTROLLER)) == expected | (
        {CRpc.EXPAND_VOLUME} if features.expansion else set())
    assert controller_rpcs(features, Mode.NODE) == []


@pytest.mark.parametrize(("features", "mode"), list(itertools.product(COMBINATIONS, Mode)),
                         ids=lambda v: label(v) if isinstance(v, Features) else v.value)
def test_plugin_capabilities(features: Features, mode: Mode) -> None:
    caps = plugin_capabilities(features, mode)
    services = [c.service.type for c in caps if c.service is not None]
    expansion = [c.volume_expansion.type for c in caps if c.volume_expansion is not None]
    Service = csi.PluginCapabilityServiceType
    assert services == [Service.VOLUME_ACCESSIBILITY_CONSTRAINTS] + (
        [Service.CONTROLLER_SERVICE] if mode.serves_controller else [])
    assert expansion == ([csi.PluginCapabilityVolumeExpansionType.ONLINE] if features.expansion else [])
