"""Unit tests of the pure request checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends import errors
from backends.base import TOPOLOGY_KEY, AccessType, Features, SourceKind, volume_id_for
from backends.nodeops import PathPolicy
from csi import validation as v
from csi.gen.csi import v1 as csi

FEATURES = Features()
Mode = csi.VolumeCapabilityAccessModeMode


def cap(mode: Mode = Mode.SINGLE_NODE_WRITER, fs: str = "", block: bool = False,
        flags: tuple[str, ...] = ()) -> csi.VolumeCapability:
    access = csi.VolumeCapabilityAccessMode(mode=mode)
    if block:
        return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=access)
    return csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type=fs, mount_flags=list(flags)),
                                access_mode=access)


def test_volume_ids_are_deterministic_safe_and_distinct() -> None:
    a, b = volume_id_for("pvc-1"), volume_id_for("pvc-2")
    assert a == volume_id_for("pvc-1") and a != b
    assert os.path.basename(a) == a and a.startswith("lcv-") and len(a) == 36
    assert volume_id_for("../../etc/passwd").startswith("lcv-")


@pytest.mark.parametrize("name", ["", "x" * 129, "a\nb", "a\0b", "tab\tname"])
def test_bad_names_are_invalid(name: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        v.volume_name(name)


def test_unknown_volume_id_is_not_found_and_empty_is_invalid() -> None:
    with pytest.raises(errors.InvalidArgument):
        v.volume_id("")
    assert v.volume_id("../etc") == "../etc"  # well-formed: that it names no volume is a lookup, made later
    with pytest.raises(errors.NotFound):
        v.known_volume("../etc")
    assert v.known_volume(v.volume_id(volume_id_for("x"))) == volume_id_for("x")


@pytest.mark.parametrize("path", ["rel/path", "/a/../b", "/a/./b", "/", "/a\0b", "/a\nb", "//double"])
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        v.path(path, "target_path")


def test_paths_must_lie_strictly_below_the_kubelet_dir_and_clear_of_the_drivers_own(tmp_path: Path) -> None:
    kubelet = tmp_path / "kubelet"
    own = kubelet / "plugins" / "localcsi.dev" / "block"
    policy = PathPolicy((str(kubelet),), (str(own),))
    assert v.path(str(kubelet / "pods/x/mount"), "t", policy) == str(kubelet / "pods/x/mount")
    assert v.path(str(kubelet / "pods/x/mount") + "/", "t", policy) == str(kubelet / "pods/x/mount")
    for bad in (tmp_path / "elsewhere", kubelet, Path(str(kubelet) + "-evil/x"), own, own / "lcv-x",
                own.parent, kubelet / "plugins"):
        with pytest.raises(errors.InvalidArgument):
            v.path(str(bad), "t", policy)
        assert not policy.admits(str(bad))
    assert v.path(str(tmp_path / "elsewhere"), "t") == str(tmp_path / "elsewhere")


def test_a_volume_path_is_a_string_check_only() -> None:
    """Stats and expansion on a path where no volume can be (relative, say) are NOT_FOUND, not malformed."""
    assert v.volume_path("some/path") == "some/path"
    for bad in ("", "/a\0b", "/a\nb"):
        with pytest.raises(errors.InvalidArgument):
            v.volume_path(bad)


def test_capabilities_merge_and_defaults() -> None:
    req = v.capabilities([cap(fs="xfs"), cap(block=True)], FEATURES)
    assert req.access_types == {AccessType.MOUNT, AccessType.BLOCK}
    assert req.fs_type == "xfs" and not req.read_only
    assert v.capability(cap(), FEATURES).fs_type == "ext4"
    assert v.capability(cap(Mode.SINGLE_NODE_READER_ONLY), FEATURES).read_only


@pytest.mark.parametrize("mode", [Mode.MULTI_NODE_MULTI_WRITER, Mode.MULTI_NODE_READER_ONLY,
                                  Mode.MULTI_NODE_SINGLE_WRITER])
def test_multi_node_modes_are_unsupported(mode: Mode) -> None:
    with pytest.raises(v.UnsupportedCapability):
        v.capability(cap(mode), FEATURES)


def test_malformed_capabilities_are_invalid() -> None:
    with pytest.raises(errors.InvalidArgument):
        v.capabilities([], FEATURES)
    with pytest.raises(errors.InvalidArgument):
        v.capability(csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume()), FEATURES)
    with pytest.raises(errors.InvalidArgument):
        v.capability(csi.VolumeCapability(access_mode=csi.VolumeCapabilityAccessMode(mode=Mode.SINGLE_NODE_WRITER)),
                     FEATURES)
    with pytest.raises(errors.InvalidArgument):
        v.capability(cap(Mode.UNKNOWN), FEATURES)
    both = csi.VolumeCapability.parse(bytes(cap(block=True)) + bytes(cap(fs="ext4")))
    with pytest.raises(errors.InvalidArgument):
        v.capability(both, FEATURES)
    with pytest.raises(v.UnsupportedCapability):
        v.capability(cap(fs="ntfs"), FEATURES)
    with pytest.raises(errors.InvalidArgument):
        v.capability(cap(flags=("bind",)), FEATURES)
    with pytest.raises(v.UnsupportedCapability):
        v.capabilities([cap(fs="xfs"), cap(fs="ext4")], FEATURES)


def test_capacity_range() -> None:
    assert v.capacity_range(None) == (0, 0)
    assert v.capacity_range(csi.CapacityRange(required_bytes=5, limit_bytes=10)) == (5, 10)
    for bad in (csi.CapacityRange(required_bytes=-1), csi.CapacityRange(required_bytes=11, limit_bytes=10)):
        with pytest.raises(errors.InvalidArgument):
            v.capacity_range(bad)


def test_topology_requisite_must_name_this_node() -> None:
    here = csi.Topology(segments={TOPOLOGY_KEY: "n1"})
    there = csi.Topology(segments={TOPOLOGY_KEY: "n2"})
    assert v.topology_allows(None, "n1")
    assert v.topology_allows(csi.TopologyRequirement(preferred=[there]), "n1")
    assert v.topology_allows(csi.TopologyRequirement(requisite=[there, here]), "n1")
    assert not v.topology_allows(csi.TopologyRequirement(requisite=[there]), "n1")


def test_content_source() -> None:
    sid = "lcs-" + "a" * 32
    src = v.content_source(csi.VolumeContentSource(snapshot=csi.VolumeContentSourceSnapshotSource(snapshot_id=sid)))
    assert src is not None and src.kind is SourceKind.SNAPSHOT and src.source_id == sid
    v.known_source(src)
    unknown = v.content_source(csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource(volume_id="nope")))
    with pytest.raises(errors.NotFound):  # a lookup, made after every check of the request
        v.known_source(unknown)
    with pytest.raises(errors.InvalidArgument):
        v.content_source(csi.VolumeContentSource())
    with pytest.raises(errors.InvalidArgument):
        v.content_source(csi.VolumeContentSource(volume=csi.VolumeContentSourceVolumeSource()))
