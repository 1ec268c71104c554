"""The one place advertised capabilities come from: the backend's features and the serving mode."""

from __future__ import annotations

from backends.base import Features
from csi.config import Mode
from csi.gen.csi import v1 as csi

CRpc = csi.ControllerServiceCapabilityRpcType
NRpc = csi.NodeServiceCapabilityRpcType


def controller_rpcs(features: Features, mode: Mode) -> list[CRpc]:
    if mode is Mode.NODE:
        return []
    if mode is Mode.CONTROLLER:
        # No node state here: only what the cluster-wide attacher and resizer call.
        rpcs = [CRpc.PUBLISH_UNPUBLISH_VOLUME, CRpc.SINGLE_NODE_MULTI_WRITER]
        return rpcs + ([CRpc.EXPAND_VOLUME] if features.expansion else [])
    rpcs = [
        CRpc.CREATE_DELETE_VOLUME,
        CRpc.PUBLISH_UNPUBLISH_VOLUME,
        CRpc.LIST_VOLUMES,
        CRpc.GET_CAPACITY,
        CRpc.PUBLISH_READONLY,
        CRpc.LIST_VOLUMES_PUBLISHED_NODES,
        CRpc.VOLUME_CONDITION,
        CRpc.GET_VOLUME,
        CRpc.SINGLE_NODE_MULTI_WRITER,
    ]
    if features.expansion:
        rpcs.append(CRpc.EXPAND_VOLUME)
    if features.snapshots:
        rpcs += [CRpc.CREATE_DELETE_SNAPSHOT, CRpc.LIST_SNAPSHOTS, CRpc.GET_SNAPSHOT]
    if features.clones:
        rpcs.append(CRpc.CLONE_VOLUME)
    return rpcs


def node_rpcs(features: Features) -> list[NRpc]:
    rpcs = [NRpc.STAGE_UNSTAGE_VOLUME, NRpc.GET_VOLUME_STATS, NRpc.VOLUME_CONDITION, NRpc.SINGLE_NODE_MULTI_WRITER]
    if features.expansion:
        rpcs.append(NRpc.EXPAND_VOLUME)
    return rpcs


def plugin_capabilities(features: Features, mode: Mode) -> list[csi.PluginCapability]:
    caps = [
        csi.PluginCapability(
            service=csi.PluginCapabilityService(type=csi.PluginCapabilityServiceType.VOLUME_ACCESSIBILITY_CONSTRAINTS)
        )
    ]
    if mode.serves_controller:
        caps.append(
            csi.PluginCapability(service=csi.PluginCapabilityService(
                type=csi.PluginCapabilityServiceType.CONTROLLER_SERVICE))
        )
    if features.expansion:
        caps.append(
            csi.PluginCapability(volume_expansion=csi.PluginCapabilityVolumeExpansion(
                type=csi.PluginCapabilityVolumeExpansionType.ONLINE))
        )
    return caps
