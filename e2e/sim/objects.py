"""The Kubernetes objects the harness keeps in place of an API server.

Only the fields the CSI callers read are modelled. Names follow Kubernetes:
a claim's volume is ``pvc-<claim uid>``, exactly as the external-provisioner
names the PersistentVolume (and hence the CSI volume name).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from csi.gen.csi import v1 as csi

TOPOLOGY_KEY = "topology.localcsi.dev/node"
#: StorageClass parameters with this prefix are the sidecars' own; the provisioner strips them from CreateVolume.
RESERVED_PREFIX = "csi.storage.k8s.io/"
FSTYPE_PARAM = "csi.storage.k8s.io/fstype"
Mode = csi.VolumeCapabilityAccessModeMode


class VolumeMode(enum.Enum):
    FILESYSTEM = "Filesystem"
    BLOCK = "Block"


class AccessMode(enum.Enum):
    RWO = "ReadWriteOnce"
    RWOP = "ReadWriteOncePod"


def new_uid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class StorageClass:
    name: str
    parameters: dict[str, str]
    mount_options: tuple[str, ...] = ()

    @property
    def fs_type(self) -> str:
        return self.parameters.get(FSTYPE_PARAM, "")

    def with_fs_type(self, fs_type: str) -> StorageClass:
        return StorageClass(f"{self.name}-{fs_type}", {**self.parameters, FSTYPE_PARAM: fs_type}, self.mount_options)


@dataclass(frozen=True)
class PersistentVolume:
    """What CreateVolume returned, as the provisioner records it in the PV."""

    name: str
    volume_handle: str
    capacity_bytes: int
    volume_attributes: dict[str, str]
    node: str
    volume_mode: VolumeMode
    fs_type: str
    access_mode: AccessMode
    mount_options: tuple[str, ...] = ()
    read_only: bool = False


@dataclass
class Claim:
    """A PersistentVolumeClaim with late binding (``WaitForFirstConsumer``)."""

    name: str
    size_bytes: int
    storage_class: StorageClass
    volume_mode: VolumeMode = VolumeMode.FILESYSTEM
    access_mode: AccessMode = AccessMode.RWO
    namespace: str = "default"
    uid: str = field(default_factory=new_uid)
    snapshot_handle: str = ""
    #: The scheduler's ``volume.kubernetes.io/selected-node`` annotation.
    selected_node: str = ""
    pv: PersistentVolume | None = None

    @property
    def pv_name(self) -> str:
        return f"pvc-{self.uid}"


@dataclass
class Pod:
    name: str
    claims: list[Claim]
    namespace: str = "default"
    uid: str = field(default_factory=new_uid)
    read_only: bool = False
    #: ``spec.nodeSelector`` on the node name (a restore must run where its snapshot lives).
    node_selector: str = ""
    node: str = ""


def access_mode_for(mode: AccessMode, multi_writer: bool) -> Mode:
    """How kubelet and the sidecars map a PV access mode once the driver advertises SINGLE_NODE_MULTI_WRITER."""
    if mode is AccessMode.RWOP:
        return Mode.SINGLE_NODE_SINGLE_WRITER if multi_writer else Mode.SINGLE_NODE_WRITER
    return Mode.SINGLE_NODE_MULTI_WRITER if multi_writer else Mode.SINGLE_NODE_WRITER


def capability(volume_mode: VolumeMode, fs_type: str, access: AccessMode, multi_writer: bool,
               mount_options: tuple[str, ...] = ()) -> csi.VolumeCapability:
    mode = csi.VolumeCapabilityAccessMode(mode=access_mode_for(access, multi_writer))
    if volume_mode is VolumeMode.BLOCK:
        return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=mode)
    return csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(fs_type=fs_type, mount_flags=list(mount_options)), access_mode=mode)


def segment(node: str) -> csi.Topology:
    return csi.Topology(segments={TOPOLOGY_KEY: node})
