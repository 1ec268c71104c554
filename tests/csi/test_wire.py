"""The strict wire check (csi/wire.py): what a conforming protobuf parser rejects, the driver rejects first.

Requests are built byte by byte with tests/csi/protowire.py, independent of the generated code.
"""

from __future__ import annotations

import pytest

from csi import wire
from csi.gen.csi import v1 as csi
from tests.csi.protowire import LEN, VARINT, entry, ld, tag, varint, vint

MIB = 1 << 20
CAP = ld(2, ld(1, "ext4") + ld(2, "noatime")) + ld(3, vint(1, 1))  # mount {fs_type, mount_flags}, access_mode


def test_well_formed_requests_pass() -> None:
    request = csi.CreateVolumeRequest(
        name="pvc-1", capacity_range=csi.CapacityRange(required_bytes=64 * MIB, limit_bytes=-1),
        volume_capabilities=[csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume())],
        parameters={"a": "b"}, secrets={"s": "t"},
        accessibility_requirements=csi.TopologyRequirement(requisite=[csi.Topology(segments={"k": "v"})]))
    wire.check(bytes(request), csi.CreateVolumeRequest)
    wire.check(ld(1, "pvc-2") + ld(2, vint(1, 64 * MIB)) + ld(3, CAP) + entry(4, "k", "v"), csi.CreateVolumeRequest)
    wire.check(b"", csi.CreateVolumeRequest)


def test_unknown_fields_are_kept_whatever_their_wire_type() -> None:
    wire.check(ld(1, "pvc") + vint(99, 7) + ld(100, b"\xff\xfe") + tag(101, 5) + b"\0\0\0\0", csi.CreateVolumeRequest)


@pytest.mark.parametrize(("data", "message"), [
    (b"\x08", "truncated varint"),
    (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
    (b"\x0a\x05ab", "claims 5 bytes past the end"),
    (tag(0, VARINT) + varint(1), "field number 0"),
    (tag(9, 3), "unsupported wire type 3"),  # a group: proto2 only, never CSI
    (tag(9, 4), "unsupported wire type 4"),
    (tag(9, 1) + b"\0\0\0", "truncated fixed-width field"),
    (tag(9, 5) + b"\0", "truncated fixed-width field"),
], ids=["truncated-varint", "long-varint", "length-past-end", "field-0", "group-start", "group-end",
        "short-fixed64", "short-fixed32"])
def test_malformed_framing_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wire.check(data, csi.CreateVolumeRequest)


@pytest.mark.parametrize(("data", "kind"), [
    (vint(1, 5), csi.CreateVolumeRequest),                 # name (a string) as a varint
    (tag(1, 5) + b"\1\2\3\4", csi.CreateVolumeRequest),    # name as fixed32
    (vint(2, 1), csi.CreateVolumeRequest),                 # capacity_range (a message) as a varint
    (vint(4, 1), csi.CreateVolumeRequest),                 # parameters (a map) as a varint
    (ld(1, b"\x05"), csi.ListVolumesRequest),              # max_entries (int32) length-delimited
], ids=["string-as-varint", "string-as-fixed32", "message-as-varint", "map-as-varint", "int-as-bytes"])
def test_a_field_with_the_wrong_wire_type_is_refused(data: bytes, kind: type[csi.CreateVolumeRequest]) -> None:
    with pytest.raises(ValueError, match="arrived with wire type"):
        wire.check(data, kind)


@pytest.mark.parametrize("data", [
    ld(1, b"\xc3\x28"),                                     # name: invalid UTF-8
    ld(2, b"\x08"),                                         # inside capacity_range: a truncated varint
    ld(2, ld(1, b"x")),                                     # inside capacity_range: required_bytes as bytes
    ld(3, CAP) + ld(3, ld(2, vint(1, 3))),                  # the second capability's mount: fs_type a varint
    ld(4, ld(1, "key") + ld(2, b"\xc3\x28")),               # a map value that is not UTF-8
    ld(4, ld(1, "key") + vint(2, 1)),                       # a map value sent as a varint
    ld(7, ld(1, ld(1, vint(1, 1)))),                        # topology segments' entry: key a varint
], ids=["utf8", "nested-truncated", "nested-wrong-type", "repeated-message", "map-value-utf8",
        "map-value-type", "deep-map"])
def test_errors_inside_nested_messages_and_maps_are_found(data: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        wire.check(data, csi.CreateVolumeRequest)


def test_nesting_beyond_the_limit_is_refused() -> None:
    wire.check(ld(2, vint(1, 1)), csi.CreateVolumeRequest, depth=wire.MAX_DEPTH - 1)
    with pytest.raises(ValueError, match="nested too deeply"):
        wire.check(ld(2, vint(1, 1)), csi.CreateVolumeRequest, depth=wire.MAX_DEPTH)


def test_the_expected_wire_types_are_protobufs() -> None:
    assert (wire.VARINT, wire.FIXED64, wire.LEN, wire.FIXED32) == (VARINT, 1, LEN, 5)
