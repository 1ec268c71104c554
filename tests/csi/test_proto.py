"""Wire-compatibility tests for the generated CSI v1.12.0 bindings in csi/gen.

The generated classes are checked against facts written down independently of them:
bytes assembled by hand from the published field numbers (tag = number << 3 | wire type)
and a table of the published messages, enums and RPCs. A generator or .proto mistake that
renumbers, retypes or drops a field breaks one of these tests.
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import betterproto2
import grpclib
import grpclib.client
import grpclib.const
import grpclib.server
import pytest
from grpclib.testing import ChannelFor

from csi.gen.csi import v1 as csi
from csi.gen.message_pool import default_message_pool
from tests.csi.protowire import decode_map, entry, ld, varint, vint


def test_helpers_match_protobuf_encoding_examples() -> None:
    # The protobuf encoding guide's examples: 150 as field 1, "testing" as field 2.
    assert vint(1, 150) == b"\x08\x96\x01"
    assert ld(2, "testing") == b"\x12\x07testing"
    assert varint(-1) == b"\xff" * 9 + b"\x01"


# --- field numbers, checked byte by byte -----------------------------------------------

SINGLE_WRITER = csi.VolumeCapabilityAccessModeMode.SINGLE_NODE_WRITER


def block_capability() -> csi.VolumeCapability:
    return csi.VolumeCapability(
        block=csi.VolumeCapabilityBlockVolume(),
        access_mode=csi.VolumeCapabilityAccessMode(mode=SINGLE_WRITER),
    )


BLOCK_CAPABILITY_BYTES = ld(1, b"") + ld(3, vint(1, 1))


def test_create_volume_request_uses_published_field_numbers() -> None:
    request = csi.CreateVolumeRequest(
        name="pvc-1",
        capacity_range=csi.CapacityRange(required_bytes=1 << 30, limit_bytes=2 << 30),
        volume_capabilities=[block_capability()],
        parameters={"backend": "lvm"},
        secrets={"token": "s3cret"},
        volume_content_source=csi.VolumeContentSource(
            snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id="snap-1")
        ),
        accessibility_requirements=csi.TopologyRequirement(
            requisite=[csi.Topology(segments={"node": "n1"})],
            preferred=[csi.Topology(segments={"node": "n2"})],
        ),
        mutable_parameters={"iops": "100"},
    )
    expected = (
        ld(1, "pvc-1")
        + ld(2, vint(1, 1 << 30) + vint(2, 2 << 30))
        + ld(3, BLOCK_CAPABILITY_BYTES)
        + entry(4, "backend", "lvm")
        + entry(5, "token", "s3cret")
        + ld(6, ld(1, ld(1, "snap-1")))
        + ld(7, ld(1, entry(1, "node", "n1")) + ld(2, entry(1, "node", "n2")))
        + entry(8, "iops", "100")
    )
    assert bytes(request) == expected
    assert csi.CreateVolumeRequest.parse(expected) == request


def test_volume_content_source_volume_is_field_two() -> None:
    source = csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id="v1"))
    assert bytes(source) == ld(2, ld(1, "v1"))
    assert betterproto2.which_one_of(csi.VolumeContentSource.parse(ld(2, ld(1, "v1"))), "type")[0] == "volume"


def test_empty_block_volume_is_still_present_on_the_wire() -> None:
    assert bytes(block_capability()) == BLOCK_CAPABILITY_BYTES
    decoded = csi.VolumeCapability.parse(ld(1, b""))
    name, value = betterproto2.which_one_of(decoded, "access_type")
    assert name == "block"
    assert isinstance(value, csi.VolumeCapabilityBlockVolume)
    assert decoded.mount is None
    assert decoded.access_mode is None


def test_mount_volume_fields() -> None:
    capability = csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(
            fs_type="xfs", mount_flags=["noatime", "nodiscard"], volume_mount_group="2000"
        ),
        access_mode=csi.VolumeCapabilityAccessMode(mode=csi.VolumeCapabilityAccessModeMode.SINGLE_NODE_MULTI_WRITER),
    )
    expected = ld(2, ld(1, "xfs") + ld(2, "noatime") + ld(2, "nodiscard") + ld(3, "2000")) + ld(3, vint(1, 7))
    assert bytes(capability) == expected
    decoded = csi.VolumeCapability.parse(expected)
    assert betterproto2.which_one_of(decoded, "access_type")[0] == "mount"
    assert decoded.mount is not None
    assert decoded.mount.mount_flags == ["noatime", "nodiscard"]


def test_oneof_with_nothing_set_reports_empty_name() -> None:
    assert betterproto2.which_one_of(csi.VolumeCapability(), "access_type") == ("", None)


def test_oneof_with_both_members_on_the_wire_is_detected() -> None:
    # Protobuf says the last one wins; betterproto2 0.10 keeps both and which_one_of
    # raises. Handlers must turn that RuntimeError into INVALID_ARGUMENT.
    decoded = csi.VolumeCapability.parse(ld(1, b"") + ld(2, ld(1, "ext4")))
    with pytest.raises(RuntimeError, match="more than one field set in oneof"):
        betterproto2.which_one_of(decoded, "access_type")


@pytest.mark.parametrize(("request_", "expected"), [
    (csi.NodeStageVolumeRequest(
        volume_id="vol-1",
        publish_context={"device": "/dev/loop3"},
        staging_target_path="/var/lib/kubelet/staging/vol-1",
        volume_capability=block_capability(),
        secrets={"k": "v"},
        volume_context={"fs": "xfs"},
    ), ld(1, "vol-1") + entry(2, "device", "/dev/loop3") + ld(3, "/var/lib/kubelet/staging/vol-1")
        + ld(4, BLOCK_CAPABILITY_BYTES) + entry(5, "k", "v") + entry(6, "fs", "xfs")),
    (csi.NodePublishVolumeRequest(
        volume_id="vol-1",
        publish_context={"a": "b"},
        staging_target_path="/stage",
        target_path="/target",
        volume_capability=block_capability(),
        readonly=True,
        secrets={"c": "d"},
        volume_context={"e": "f"},
    ), ld(1, "vol-1") + entry(2, "a", "b") + ld(3, "/stage") + ld(4, "/target") + ld(5, BLOCK_CAPABILITY_BYTES)
        + vint(6, 1) + entry(7, "c", "d") + entry(8, "e", "f")),
], ids=["NodeStageVolumeRequest", "NodePublishVolumeRequest"])
def test_node_request_field_numbers(request_: betterproto2.Message, expected: bytes) -> None:
    assert bytes(request_) == expected
    assert type(request_).parse(expected) == request_


def test_map_field_entries_encode_and_decode() -> None:
    parameters = {"backend": "loop", "fsType": "ext4", "empty": ""}
    encoded = bytes(csi.CreateVolumeRequest(parameters=parameters))
    assert decode_map(encoded, 4) == parameters
    # Entry order on the wire is free and a repeated key keeps the last value.
    wire = entry(4, "b", "2") + entry(4, "a", "1") + entry(4, "b", "3")
    assert csi.CreateVolumeRequest.parse(wire).parameters == {"a": "1", "b": "3"}


@pytest.mark.parametrize(
    ("ready", "wire"),
    [(None, b""), (False, ld(1, b"")), (True, ld(1, vint(1, 1)))],
)
def test_bool_value_wrapper_keeps_presence(ready: bool | None, wire: bytes) -> None:
    assert bytes(csi.ProbeResponse(ready=ready)) == wire
    assert csi.ProbeResponse.parse(wire).ready is ready


def test_int64_value_wrapper_zero_is_not_unset() -> None:
    response = csi.GetCapacityResponse(available_capacity=5, maximum_volume_size=0)
    assert bytes(response) == vint(1, 5) + ld(2, b"")
    decoded = csi.GetCapacityResponse.parse(vint(1, 5) + ld(3, vint(1, 4096)))
    assert decoded.maximum_volume_size is None
    assert decoded.minimum_volume_size == 4096


def test_snapshot_timestamp_and_fields() -> None:
    created = datetime.datetime(1970, 1, 1, 0, 0, 7, 5, tzinfo=datetime.UTC)
    snapshot = csi.Snapshot(
        size_bytes=4096,
        snapshot_id="snap-1",
        source_volume_id="vol-1",
        creation_time=created,
        ready_to_use=True,
        group_snapshot_id="grp",
    )
    expected = (
        vint(1, 4096) + ld(2, "snap-1") + ld(3, "vol-1") + ld(4, vint(1, 7) + vint(2, 5000)) + vint(5, 1) + ld(6, "grp")
    )
    assert bytes(snapshot) == expected
    assert csi.Snapshot.parse(expected).creation_time == created


def test_capability_responses_nest_the_rpc_type() -> None:
    modify = csi.ControllerServiceCapabilityRpcType.MODIFY_VOLUME
    response = csi.ControllerGetCapabilitiesResponse(
        capabilities=[csi.ControllerServiceCapability(rpc=csi.ControllerServiceCapabilityRpc(type=modify))]
    )
    assert bytes(response) == ld(1, ld(1, vint(1, 14)))
    plugin = csi.PluginCapability(
        volume_expansion=csi.PluginCapabilityVolumeExpansion(type=csi.PluginCapabilityVolumeExpansionType.ONLINE)
    )
    assert bytes(plugin) == ld(2, vint(1, 1))


def test_negative_int64_uses_ten_byte_varint() -> None:
    assert bytes(csi.CapacityRange(required_bytes=-1)) == vint(1, -1)
    assert csi.CapacityRange.parse(vint(1, -1)).required_bytes == -1


# --- decode then encode gives the same bytes ------------------------------------------

ROUND_TRIP_CASES: list[tuple[type[betterproto2.Message], bytes]] = [
    (csi.VolumeCapability, BLOCK_CAPABILITY_BYTES),
    (csi.DeleteVolumeRequest, ld(1, "vol-9") + entry(2, "user", "admin")),
    (csi.ControllerExpandVolumeRequest, ld(1, "v") + ld(2, vint(1, 10)) + ld(4, BLOCK_CAPABILITY_BYTES)),
    (csi.NodeGetInfoResponse, ld(1, "node-a") + vint(2, 64) + ld(3, entry(1, "topology.localcsi/node", "node-a"))),
    (csi.NodeGetVolumeStatsResponse, ld(1, vint(1, 10) + vint(2, 20) + vint(3, 10) + vint(4, 1)) + ld(2, vint(1, 1))),
    (
        csi.ListVolumesResponse,
        ld(1, ld(1, vint(1, 100) + ld(2, "v1")) + ld(2, ld(1, "node-a"))) + ld(2, "token-2"),
    ),
    (csi.GetMetadataDeltaResponse, vint(1, 2) + vint(2, 1 << 20) + ld(3, vint(1, 8192) + vint(2, 4096))),
    (csi.ValidateVolumeCapabilitiesResponse, ld(1, ld(2, BLOCK_CAPABILITY_BYTES)) + ld(2, "ok")),
]


@pytest.mark.parametrize(("cls", "wire"), ROUND_TRIP_CASES, ids=[c.__name__ for c, _ in ROUND_TRIP_CASES])
def test_decode_then_encode_is_byte_identical(cls: type[betterproto2.Message], wire: bytes) -> None:
    assert bytes(cls.parse(wire)) == wire


def test_unknown_fields_and_enum_values_survive_a_round_trip() -> None:
    # A newer orchestrator may send fields or enum values this release does not know.
    wire = ld(1, "vol-1") + ld(99, "from-the-future")
    assert bytes(csi.DeleteVolumeRequest.parse(wire)) == wire
    mode = csi.VolumeCapabilityAccessMode.parse(vint(1, 42))
    assert int(mode.mode) == 42
    assert bytes(mode) == vint(1, 42)


# --- the whole published contract -------------------------------------------------------


def parse_table(text: str) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    current = ""
    for token in text.split():
        if token.endswith(":"):
            current = token[:-1]
            table[current] = []
        else:
            table[current].append(token)
    return table


def describe_fields(cls: type[betterproto2.Message]) -> list[str]:
    tokens = []
    for field in dataclasses.fields(cast(Any, cls)):  # generated messages are dataclasses
        meta = betterproto2.FieldMetadata.get(field)
        kind = ("*" if meta.repeated else "") + meta.proto_type + (f"@{meta.group}" if meta.group else "")
        tokens.append(f"{field.name}={meta.number}:{kind}")
    return tokens


def test_every_published_message_has_the_published_fields() -> None:
    expected = parse_table(PUBLISHED_MESSAGES)
    prefix = "type.googleapis.com/csi.v1."
    generated = {
        url.removeprefix(prefix): cls for url, cls in default_message_pool.url_to_type.items() if url.startswith(prefix)
    }
    assert sorted(generated) == sorted(expected)
    for name, fields in expected.items():
        assert describe_fields(generated[name]) == fields, name


def enum_class_name(full_name: str) -> str:
    return "".join(part.capitalize() if part.isupper() else part for part in full_name.split("."))


def test_every_published_enum_has_the_published_values() -> None:
    for full_name, values in parse_table(PUBLISHED_ENUMS).items():
        enum_cls = getattr(csi, enum_class_name(full_name))
        assert [f"{member.name}={member.value}" for member in enum_cls] == values, full_name


# Each service's RPCs in published order; ">" marks a server-streaming RPC.
PUBLISHED_RPCS = {
    "Identity": "GetPluginInfo GetPluginCapabilities Probe",
    "Controller": (
        "CreateVolume DeleteVolume ControllerPublishVolume ControllerUnpublishVolume ValidateVolumeCapabilities"
        " ListVolumes GetCapacity ControllerGetCapabilities CreateSnapshot DeleteSnapshot ListSnapshots GetSnapshot"
        " ControllerExpandVolume ControllerGetVolume ControllerModifyVolume"
    ),
    "GroupController": (
        "GroupControllerGetCapabilities CreateVolumeGroupSnapshot DeleteVolumeGroupSnapshot GetVolumeGroupSnapshot"
    ),
    "SnapshotMetadata": "GetMetadataAllocated> GetMetadataDelta>",
    "Node": (
        "NodeStageVolume NodeUnstageVolume NodePublishVolume NodeUnpublishVolume NodeGetVolumeStats NodeExpandVolume"
        " NodeGetCapabilities NodeGetInfo"
    ),
}


@pytest.mark.parametrize("service", sorted(PUBLISHED_RPCS))
def test_service_paths_and_streaming_match(service: str) -> None:
    servicer = getattr(csi, f"{service}Base")()
    mapping = servicer.__mapping__()
    expected = {}
    for rpc in PUBLISHED_RPCS[service].split():
        streaming = rpc.endswith(">")
        cardinality = grpclib.const.Cardinality.UNARY_STREAM if streaming else grpclib.const.Cardinality.UNARY_UNARY
        expected[f"/csi.v1.{service}/{rpc.rstrip('>')}"] = cardinality
    assert {path: handler.cardinality for path, handler in mapping.items()} == expected


# --- the generated servicers and stubs over grpclib -------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeIdentity(csi.IdentityBase):
    async def get_plugin_info(self, message: csi.GetPluginInfoRequest) -> csi.GetPluginInfoResponse:
        return csi.GetPluginInfoResponse(name="localcsi.test", vendor_version="0.1.0", manifest={"commit": "abc"})

    async def probe(self, message: csi.ProbeRequest) -> csi.ProbeResponse:
        raise grpclib.GRPCError(grpclib.const.Status.FAILED_PRECONDITION, "backend not ready")


class FakeSnapshotMetadata(csi.SnapshotMetadataBase):
    async def get_metadata_allocated(
        self, message: csi.GetMetadataAllocatedRequest
    ) -> AsyncIterator[csi.GetMetadataAllocatedResponse]:
        for offset in (0, 8192):
            yield csi.GetMetadataAllocatedResponse(
                block_metadata_type=csi.BlockMetadataType.FIXED_LENGTH,
                volume_capacity_bytes=1 << 20,
                block_metadata=[csi.BlockMetadata(byte_offset=offset + message.starting_offset, size_bytes=4096)],
            )


@pytest.mark.anyio
async def test_servicer_and_stub_talk_over_grpclib() -> None:
    with anyio.fail_after(10):
        async with ChannelFor([FakeIdentity(), FakeSnapshotMetadata()]) as channel:
            identity = csi.IdentityStub(channel)
            info = await identity.get_plugin_info(csi.GetPluginInfoRequest())
            assert (info.name, info.manifest) == ("localcsi.test", {"commit": "abc"})

            with pytest.raises(grpclib.GRPCError) as failed:
                await identity.probe(csi.ProbeRequest())
            assert failed.value.status is grpclib.const.Status.FAILED_PRECONDITION
            assert failed.value.message == "backend not ready"

            with pytest.raises(grpclib.GRPCError) as missing:
                await identity.get_plugin_capabilities(csi.GetPluginCapabilitiesRequest())
            assert missing.value.status is grpclib.const.Status.UNIMPLEMENTED

            metadata = csi.SnapshotMetadataStub(channel)
            request = csi.GetMetadataAllocatedRequest(snapshot_id="s", starting_offset=512)
            offsets = [r.block_metadata[0].byte_offset async for r in metadata.get_metadata_allocated(request)]
            assert offsets == [512, 8704]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="csi-proto-"))
    yield path
    shutil.rmtree(path)


@pytest.mark.anyio
async def test_stub_reaches_a_server_on_a_unix_socket(socket_dir: Path) -> None:
    socket_path = str(socket_dir / "csi.sock")
    server = grpclib.server.Server([FakeIdentity()])
    await server.start(path=socket_path)
    channel = grpclib.client.Channel(path=socket_path)
    try:
        with anyio.fail_after(10):
            info = await csi.IdentityStub(channel).get_plugin_info(csi.GetPluginInfoRequest(), timeout=5)
        assert info.vendor_version == "0.1.0"
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


# --- the published CSI v1.12.0 contract, written out as a table -------------------------
# "name=number:type"; "*" marks repeated, "@group" a oneof member, "map" a map<string, string>.

PUBLISHED_MESSAGES = """
GetPluginInfoRequest:
GetPluginInfoResponse: name=1:string vendor_version=2:string manifest=3:map
GetPluginCapabilitiesRequest:
GetPluginCapabilitiesResponse: capabilities=1:*message
PluginCapability: service=1:message@type volume_expansion=2:message@type
PluginCapability.Service: type=1:enum
PluginCapability.VolumeExpansion: type=1:enum
ProbeRequest:
ProbeResponse: ready=1:message
CreateVolumeRequest: name=1:string capacity_range=2:message volume_capabilities=3:*message
    parameters=4:map secrets=5:map volume_content_source=6:message
    accessibility_requirements=7:message mutable_parameters=8:map
VolumeContentSource: snapshot=1:message@type volume=2:message@type
VolumeContentSource.SnapshotSource: snapshot_id=1:string
VolumeContentSource.VolumeSource: volume_id=1:string
CreateVolumeResponse: volume=1:message
VolumeCapability: block=1:message@access_type mount=2:message@access_type access_mode=3:message
VolumeCapability.BlockVolume:
VolumeCapability.MountVolume: fs_type=1:string mount_flags=2:*string volume_mount_group=3:string
VolumeCapability.AccessMode: mode=1:enum
CapacityRange: required_bytes=1:int64 limit_bytes=2:int64
Volume: capacity_bytes=1:int64 volume_id=2:string volume_context=3:map content_source=4:message
    accessible_topology=5:*message
TopologyRequirement: requisite=1:*message preferred=2:*message
Topology: segments=1:map
DeleteVolumeRequest: volume_id=1:string secrets=2:map
DeleteVolumeResponse:
ControllerPublishVolumeRequest: volume_id=1:string node_id=2:string volume_capability=3:message
    readonly=4:bool secrets=5:map volume_context=6:map
ControllerPublishVolumeResponse: publish_context=1:map
ControllerUnpublishVolumeRequest: volume_id=1:string node_id=2:string secrets=3:map
ControllerUnpublishVolumeResponse:
ValidateVolumeCapabilitiesRequest: volume_id=1:string volume_context=2:map
    volume_capabilities=3:*message parameters=4:map secrets=5:map mutable_parameters=6:map
ValidateVolumeCapabilitiesResponse: confirmed=1:message message=2:string
ValidateVolumeCapabilitiesResponse.Confirmed: volume_context=1:map volume_capabilities=2:*message
    parameters=3:map mutable_parameters=4:map
ListVolumesRequest: max_entries=1:int32 starting_token=2:string
ListVolumesResponse: entries=1:*message next_token=2:string
ListVolumesResponse.VolumeStatus: published_node_ids=1:*string volume_condition=2:message
ListVolumesResponse.Entry: volume=1:message status=2:message
ControllerGetVolumeRequest: volume_id=1:string
ControllerGetVolumeResponse: volume=1:message status=2:message
ControllerGetVolumeResponse.VolumeStatus: published_node_ids=1:*string volume_condition=2:message
ControllerModifyVolumeRequest: volume_id=1:string secrets=2:map mutable_parameters=3:map
ControllerModifyVolumeResponse:
GetCapacityRequest: volume_capabilities=1:*message parameters=2:map accessible_topology=3:message
GetCapacityResponse: available_capacity=1:int64 maximum_volume_size=2:message
    minimum_volume_size=3:message
ControllerGetCapabilitiesRequest:
ControllerGetCapabilitiesResponse: capabilities=1:*message
ControllerServiceCapability: rpc=1:message@type
ControllerServiceCapability.RPC: type=1:enum
CreateSnapshotRequest: source_volume_id=1:string name=2:string secrets=3:map parameters=4:map
CreateSnapshotResponse: snapshot=1:message
Snapshot: size_bytes=1:int64 snapshot_id=2:string source_volume_id=3:string creation_time=4:message
    ready_to_use=5:bool group_snapshot_id=6:string
DeleteSnapshotRequest: snapshot_id=1:string secrets=2:map
DeleteSnapshotResponse:
ListSnapshotsRequest: max_entries=1:int32 starting_token=2:string source_volume_id=3:string
    snapshot_id=4:string secrets=5:map
ListSnapshotsResponse: entries=1:*message next_token=2:string
ListSnapshotsResponse.Entry: snapshot=1:message
GetSnapshotRequest: snapshot_id=1:string secrets=2:map
GetSnapshotResponse: snapshot=1:message
ControllerExpandVolumeRequest: volume_id=1:string capacity_range=2:message secrets=3:map
    volume_capability=4:message
ControllerExpandVolumeResponse: capacity_bytes=1:int64 node_expansion_required=2:bool
NodeStageVolumeRequest: volume_id=1:string publish_context=2:map staging_target_path=3:string
    volume_capability=4:message secrets=5:map volume_context=6:map
NodeStageVolumeResponse:
NodeUnstageVolumeRequest: volume_id=1:string staging_target_path=2:string
NodeUnstageVolumeResponse:
NodePublishVolumeRequest: volume_id=1:string publish_context=2:map staging_target_path=3:string
    target_path=4:string volume_capability=5:message readonly=6:bool secrets=7:map
    volume_context=8:map
NodePublishVolumeResponse:
NodeUnpublishVolumeRequest: volume_id=1:string target_path=2:string
NodeUnpublishVolumeResponse:
NodeGetVolumeStatsRequest: volume_id=1:string volume_path=2:string staging_target_path=3:string
NodeGetVolumeStatsResponse: usage=1:*message volume_condition=2:message
VolumeUsage: available=1:int64 total=2:int64 used=3:int64 unit=4:enum
VolumeCondition: abnormal=1:bool message=2:string
NodeGetCapabilitiesRequest:
NodeGetCapabilitiesResponse: capabilities=1:*message
NodeServiceCapability: rpc=1:message@type
NodeServiceCapability.RPC: type=1:enum
NodeGetInfoRequest:
NodeGetInfoResponse: node_id=1:string max_volumes_per_node=2:int64 accessible_topology=3:message
NodeExpandVolumeRequest: volume_id=1:string volume_path=2:string capacity_range=3:message
    staging_target_path=4:string volume_capability=5:message secrets=6:map
NodeExpandVolumeResponse: capacity_bytes=1:int64
GroupControllerGetCapabilitiesRequest:
GroupControllerGetCapabilitiesResponse: capabilities=1:*message
GroupControllerServiceCapability: rpc=1:message@type
GroupControllerServiceCapability.RPC: type=1:enum
CreateVolumeGroupSnapshotRequest: name=1:string source_volume_ids=2:*string secrets=3:map
    parameters=4:map
CreateVolumeGroupSnapshotResponse: group_snapshot=1:message
VolumeGroupSnapshot: group_snapshot_id=1:string snapshots=2:*message creation_time=3:message
    ready_to_use=4:bool
DeleteVolumeGroupSnapshotRequest: group_snapshot_id=1:string snapshot_ids=2:*string secrets=3:map
DeleteVolumeGroupSnapshotResponse:
GetVolumeGroupSnapshotRequest: group_snapshot_id=1:string snapshot_ids=2:*string secrets=3:map
GetVolumeGroupSnapshotResponse: group_snapshot=1:message
BlockMetadata: byte_offset=1:int64 size_bytes=2:int64
GetMetadataAllocatedRequest: snapshot_id=1:string starting_offset=2:int64 max_results=3:int32
    secrets=4:map
GetMetadataAllocatedResponse: block_metadata_type=1:enum volume_capacity_bytes=2:int64
    block_metadata=3:*message
GetMetadataDeltaRequest: base_snapshot_id=1:string target_snapshot_id=2:string
    starting_offset=3:int64 max_results=4:int32 secrets=5:map
GetMetadataDeltaResponse: block_metadata_type=1:enum volume_capacity_bytes=2:int64
    block_metadata=3:*message
"""

PUBLISHED_ENUMS = """
PluginCapability.Service.Type: UNKNOWN=0 CONTROLLER_SERVICE=1 VOLUME_ACCESSIBILITY_CONSTRAINTS=2
    GROUP_CONTROLLER_SERVICE=3 SNAPSHOT_METADATA_SERVICE=4
PluginCapability.VolumeExpansion.Type: UNKNOWN=0 ONLINE=1 OFFLINE=2
VolumeCapability.AccessMode.Mode: UNKNOWN=0 SINGLE_NODE_WRITER=1 SINGLE_NODE_READER_ONLY=2
    MULTI_NODE_READER_ONLY=3 MULTI_NODE_SINGLE_WRITER=4 MULTI_NODE_MULTI_WRITER=5
    SINGLE_NODE_SINGLE_WRITER=6 SINGLE_NODE_MULTI_WRITER=7
ControllerServiceCapability.RPC.Type: UNKNOWN=0 CREATE_DELETE_VOLUME=1 PUBLISH_UNPUBLISH_VOLUME=2
    LIST_VOLUMES=3 GET_CAPACITY=4 CREATE_DELETE_SNAPSHOT=5 LIST_SNAPSHOTS=6 CLONE_VOLUME=7
    PUBLISH_READONLY=8 EXPAND_VOLUME=9 LIST_VOLUMES_PUBLISHED_NODES=10 VOLUME_CONDITION=11
    GET_VOLUME=12 SINGLE_NODE_MULTI_WRITER=13 MODIFY_VOLUME=14 GET_SNAPSHOT=15
VolumeUsage.Unit: UNKNOWN=0 BYTES=1 INODES=2
NodeServiceCapability.RPC.Type: UNKNOWN=0 STAGE_UNSTAGE_VOLUME=1 GET_VOLUME_STATS=2 EXPAND_VOLUME=3
    VOLUME_CONDITION=4 SINGLE_NODE_MULTI_WRITER=5 VOLUME_MOUNT_GROUP=6
GroupControllerServiceCapability.RPC.Type: UNKNOWN=0 CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT=1
BlockMetadataType: UNKNOWN=0 FIXED_LENGTH=1 VARIABLE_LENGTH=2
"""
