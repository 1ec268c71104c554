"""Backend profiles: how to give a node storage, start its driver, reboot it, and find leaks.

A profile owns everything backend-specific in the harness; scenarios and roles
never name a backend. Add a backend by writing one class and registering it in
:data:`PROFILES`.

A profile also declares, for every :class:`Capability`, whether the backend (with
the flags the profile gives it) has it. The cluster checks at start-up that the
drivers advertise exactly what the profile expects, so a capability the driver
stops advertising fails every scenario instead of quietly skipping the one that
needs it; a scenario skips only for a capability its profile declares absent.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import anyio

from backends.ids import is_snapshot_id, is_volume_id
from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.sim import host
from e2e.sim.deadlines import Deadlines
from e2e.sim.nodes import SimNode

MIB = 1 << 20
GIB = 1 << 30
CRpc = csi.ControllerServiceCapabilityRpcType


class Capability(enum.Enum):
    """What a scenario may need of the driver beyond the basics."""

    ONLINE_EXPANSION = "online expansion"
    SNAPSHOTS = "snapshots"
    CLONES = "clones"
    BLOCK = "raw block volumes"

    @property
    def rpc(self) -> CRpc | None:
        """The controller capability that advertises it (None: the driver says so only by serving it)."""
        return _ADVERTISED_BY.get(self)

    @property
    def in_controller_mode(self) -> bool:
        """Whether a ``--mode controller`` instance (the resizer's) advertises it too."""
        return self is Capability.ONLINE_EXPANSION


_ADVERTISED_BY = {
    Capability.ONLINE_EXPANSION: CRpc.EXPAND_VOLUME,
    Capability.SNAPSHOTS: CRpc.CREATE_DELETE_SNAPSHOT,
    Capability.CLONES: CRpc.CLONE_VOLUME,
}


def mismatch(profile: BackendProfile, capability: Capability, advertised: set[CRpc], *,
             controller_mode: bool = False) -> str:
    """How one driver's advertised controller capabilities contradict ``profile`` on ``capability`` ('' if not)."""
    rpc = capability.rpc
    if rpc is None or (controller_mode and not capability.in_controller_mode):
        return ""
    expected = profile.capabilities[capability]
    if expected and rpc not in advertised:
        return f"the driver lacks {rpc.name} ({capability.value}), which the {profile.name} profile expects"
    if not expected and rpc in advertised:
        return (f"the driver advertises {rpc.name} ({capability.value}), which the {profile.name} profile declares "
                "absent: declare it")
    return ""


def mismatches(profile: BackendProfile, advertised: set[CRpc], *, controller_mode: bool = False) -> list[str]:
    found = (mismatch(profile, c, advertised, controller_mode=controller_mode) for c in Capability)
    return [m for m in found if m]


class BackendProfile(Protocol):
    name: ClassVar[str]
    #: StorageClass parameters the scenarios use (the deploy overlay's, minus the fstype).
    parameters: ClassVar[dict[str, str]]
    #: Every :class:`Capability`: expected (True) or declared absent (False) with the flags the profile gives.
    capabilities: ClassVar[Mapping[Capability, bool]]
    #: How long the harness waits for this run's drivers and scenarios.
    deadlines: Deadlines

    def unavailable_reason(self) -> str:
        """Why this backend cannot run here ('' when it can)."""

    async def prepare(self, node: SimNode) -> None:
        """Create the node's storage (tmpfs budget, disks, a VG) before its driver starts."""

    def driver_args(self, node: SimNode) -> list[str]: ...

    def controller_args(self) -> list[str]:
        """The flags of the cluster-wide ``--mode controller`` instance: the backend, and what decides its features."""

    async def reboot(self, node: SimNode) -> None:
        """After the driver was killed: drop what a reboot drops besides mounts (loop devices, LV activation)."""

    async def leaks(self, node: SimNode, owned: set[str], staged: set[str]) -> list[str]:
        """Backend resources nothing explains: ``owned`` are live volume and snapshot ids, ``staged`` staged ids."""

    async def teardown(self, node: SimNode) -> None:
        """Remove everything :meth:`prepare` made, whatever state the run left it in."""


async def mount_tmpfs(path: Path, size_bytes: int) -> None:
    await anyio.Path(path).mkdir(parents=True, exist_ok=True)
    await host.arun(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "localcsi-e2e", str(path)])


async def unmount_tmpfs(path: Path) -> None:
    if await anyio.to_thread.run_sync(leaks.mount_count, path):
        await host.arun(["umount", "-l", str(path)], check=False)


async def detach_loops_under(directory: Path) -> list[str]:
    return await detach(await anyio.to_thread.run_sync(leaks.loops_backed_under, directory))


async def detach_loops_over(disks: list[str]) -> list[str]:
    """Detach what a driver layered over these disks (loop devices over a partition range)."""
    return await detach(await anyio.to_thread.run_sync(leaks.loops_backed_by, disks))


async def detach(loops: list[leaks.LoopDevice]) -> list[str]:
    for info in loops:
        await host.arun(["losetup", "-d", info.device], check=False)
    return [info.device for info in loops]


def kernel_has_device_mapper() -> bool:
    """Whether the running kernel has device-mapper (its control device is registered).

    Not whether ``/dev/mapper/control`` exists: LVM's tools create that node even where the kernel has no
    device-mapper, and then every activation fails.
    """
    try:
        misc = Path("/proc/misc").read_text()
    except OSError:
        return False
    return any(line.split()[-1:] == ["device-mapper"] for line in misc.splitlines())


def _files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def _volume_id_of(path: str) -> str:
    return Path(path).name.removesuffix(".img")


@dataclass
class LoopfileProfile:
    name: ClassVar[str] = "loopfile"
    parameters: ClassVar[dict[str, str]] = {"loopfile.localcsi.dev/provisioning": "thin"}
    capabilities: ClassVar[Mapping[Capability, bool]] = dict.fromkeys(Capability, True)
    deadlines: Deadlines = field(default_factory=Deadlines)

    def unavailable_reason(self) -> str:
        return "" if Path("/dev/loop-control").exists() else "no /dev/loop-control"

    def data_dir(self, node: SimNode) -> Path:
        return node.storage_dir / "volumes"

    async def prepare(self, node: SimNode) -> None:
        await mount_tmpfs(node.storage_dir, node.capacity_bytes)

    def driver_args(self, node: SimNode) -> list[str]:
        return ["--backend", "loopfile", "--loopfile-dir", str(self.data_dir(node))]

    def controller_args(self) -> list[str]:
        return ["--backend", "loopfile"]

    async def reboot(self, node: SimNode) -> None:
        await detach_loops_under(self.data_dir(node))

    async def leaks(self, node: SimNode, owned: set[str], staged: set[str]) -> list[str]:
        found = []
        for info in await anyio.to_thread.run_sync(leaks.loops_backed_under, node.storage_dir):
            if _volume_id_of(info.backing_file) not in staged:
                found.append(f"{node.name}: loop device {info.device} backs {info.backing_file}, which is not staged")
        directory = self.data_dir(node)
        for path in await anyio.to_thread.run_sync(_files_under, directory):
            stem = path.name.rsplit(".", 1)[0]
            if not ((is_volume_id(stem) or is_snapshot_id(stem)) and stem in owned):
                found.append(f"{node.name}: file {path.relative_to(directory)} belongs to no live volume or snapshot")
        return found

    async def teardown(self, node: SimNode) -> None:
        await detach_loops_under(node.storage_dir)
        await unmount_tmpfs(node.storage_dir)


@dataclass
class RawdiskProfile:
    """Whole disks: loop devices over sparse files stand in for the node's disks.

    Each node gets three unequal large disks (so placement and the capacity race have one largest disk to
    fight over) and four small ones, or 50 when the scenario makes many volumes (a burst of 100 claims).
    Snapshots are sparse images in ``snapshots/`` beside the disks (``--rawdisk-snapshot-dir``), and two equal
    medium disks let a snapshot of one be restored onto the other at its exact size (a restore onto a larger disk
    grows ext4 online, which needs CAP_SYS_RESOURCE: the kernel lane has it, this host does not).
    """

    name: ClassVar[str] = "rawdisk"
    parameters: ClassVar[dict[str, str]] = {}
    #: A disk cannot grow; clones copy onto another disk; snapshots live in the snapshot directory it is given.
    capabilities: ClassVar[Mapping[Capability, bool]] = {**dict.fromkeys(Capability, True),
                                                         Capability.ONLINE_EXPANSION: False}
    large_shares: ClassVar[tuple[float, ...]] = (0.40, 0.25, 0.15)
    small_disks: ClassVar[int] = 4
    small_disks_many: ClassVar[int] = 50
    small_bytes: ClassVar[int] = 40 * MIB
    pair_bytes: ClassVar[int] = 100 * MIB
    #: Room for snapshot images (sparse: they cost the data the scenarios wrote).
    snapshot_room: ClassVar[int] = 128 * MIB
    deadlines: Deadlines = field(default_factory=Deadlines)

    def unavailable_reason(self) -> str:
        return "" if Path("/dev/loop-control").exists() else "no /dev/loop-control"

    def disk_sizes(self, node: SimNode) -> list[int]:
        large = [int(node.capacity_bytes * share) // MIB * MIB for share in self.large_shares]
        small = [self.small_bytes] * (self.small_disks_many if node.many_volumes else self.small_disks)
        return large + [self.pair_bytes] * 2 + small

    async def prepare(self, node: SimNode) -> None:
        sizes = self.disk_sizes(node)
        await mount_tmpfs(node.storage_dir, sum(sizes) + self.snapshot_room + 64 * MIB)
        disks = []
        for index, size in enumerate(sizes):
            image = node.storage_dir / f"disk{index}.img"
            await anyio.to_thread.run_sync(host.make_sparse_file, image, size)
            disks.append(await anyio.to_thread.run_sync(host.attach_loop, image))
        node.resources["disks"] = disks

    def driver_args(self, node: SimNode) -> list[str]:
        args = ["--backend", "rawdisk", "--rawdisk-snapshot-dir", str(self.snapshot_dir(node))]
        for disk in node.resources.get("disks", []):
            args += ["--rawdisk-device", disk]
        return args

    async def reboot(self, node: SimNode) -> None:
        # The disks stay; anything the driver layered on them (loop devices over a partition range) goes.
        await detach_loops_over(node.resources.get("disks", []))

    def controller_args(self) -> list[str]:
        return ["--backend", "rawdisk"]  # as the deploy overlay: a controller-mode instance serves no snapshots

    def snapshot_dir(self, node: SimNode) -> Path:
        return node.storage_dir / "snapshots"

    async def leaks(self, node: SimNode, owned: set[str], staged: set[str]) -> list[str]:
        disks = node.resources.get("disks", [])
        signed = await anyio.to_thread.run_sync(leaks.signed_disks, disks)
        claimed = await anyio.to_thread.run_sync(leaks.claimed_disks, signed)
        found = [f"{node.name}: disk {disk} is claimed by {volume_id!r}, which is not a live volume"
                 for disk, volume_id in sorted(claimed.items()) if volume_id not in owned]
        found += [f"{node.name}: disk {disk} has a signature but no claim" for disk in signed if disk not in claimed]
        directory = self.snapshot_dir(node)
        for path in await anyio.to_thread.run_sync(_files_under, directory):
            stem = path.name.rsplit(".", 1)[0]
            if not (is_snapshot_id(stem) and stem in owned):
                found.append(f"{node.name}: snapshot file {path.name} belongs to no live snapshot")
        if not staged:
            for info in await anyio.to_thread.run_sync(leaks.loops_backed_by, disks):
                found.append(f"{node.name}: loop device {info.device} over disk {info.backing_file} with none staged")
        return found

    async def teardown(self, node: SimNode) -> None:
        disks = node.resources.get("disks", [])
        await detach_loops_over(disks)
        for disk in disks:
            await host.arun(["losetup", "-d", disk], check=False)
        await unmount_tmpfs(node.storage_dir)


@dataclass
class LvmProfile:
    """A volume group of its own per node, on one loop-backed PV, with a thin pool; needs device-mapper.

    The pool takes three quarters of the VG and the StorageClass names no type, so every
    volume is thin (capacity = the pool at overprovisioning 1.0) and both nodes can
    snapshot and clone; the rest of the VG stays free for thick volumes. The VG name is
    unique per cluster, so a scenario that left a VG behind cannot break the next one.
    """

    name: ClassVar[str] = "lvm"
    parameters: ClassVar[dict[str, str]] = {}
    #: With a thin pool: thin volumes, so snapshots and clones too.
    capabilities: ClassVar[Mapping[Capability, bool]] = dict.fromkeys(Capability, True)
    pool: ClassVar[str] = "pool"
    pool_share: ClassVar[float] = 0.75
    deadlines: Deadlines = field(default_factory=Deadlines)

    def unavailable_reason(self) -> str:
        if not kernel_has_device_mapper():
            return "this kernel lacks device-mapper (no device-mapper in /proc/misc); run it in the kernel lane"
        return ""

    def vg_name(self, node: SimNode) -> str:
        names = node.resources.get("vg", [])
        if not names:
            names = [f"e2e{uuid.uuid4().hex[:8]}{node.name.replace('-', '')}"]
            node.resources["vg"] = names
        return names[0]

    async def prepare(self, node: SimNode) -> None:
        await mount_tmpfs(node.storage_dir, node.capacity_bytes + 64 * MIB)
        image = node.storage_dir / "pv.img"
        await anyio.to_thread.run_sync(host.make_sparse_file, image, node.capacity_bytes + 32 * MIB)
        pv = await anyio.to_thread.run_sync(host.attach_loop, image)
        node.resources["pvs"] = [pv]
        vg = self.vg_name(node)
        await host.arun(["vgcreate", "-q", vg, pv])  # initialises the PV too (one LVM command less under TCG)
        pool_bytes = int(node.capacity_bytes * self.pool_share) // (4 * MIB) * (4 * MIB)
        await host.arun(["lvcreate", "-q", "-y", "--type", "thin-pool", "-L", f"{pool_bytes}b", "-n", self.pool, vg])

    def driver_args(self, node: SimNode) -> list[str]:
        return ["--backend", "lvm", "--lvm-vg", self.vg_name(node), "--lvm-thinpool", self.pool]

    def controller_args(self) -> list[str]:
        return ["--backend", "lvm", "--lvm-thinpool", self.pool]  # the VG is the nodes' business

    async def reboot(self, node: SimNode) -> None:
        await host.arun(["vgchange", "-q", "-an", self.vg_name(node)], check=False)

    async def leaks(self, node: SimNode, owned: set[str], staged: set[str]) -> list[str]:
        found = []
        for name, lv in sorted((await anyio.to_thread.run_sync(leaks.volume_lvs, self.vg_name(node))).items()):
            if name not in owned:
                found.append(f"{node.name}: LV {name} belongs to no live volume or snapshot")
            elif lv.get("lv_active") == "active" and name not in staged:
                found.append(f"{node.name}: LV {name} is active but not staged")
        return found

    async def teardown(self, node: SimNode) -> None:
        vg = self.vg_name(node)
        await host.arun(["vgchange", "-q", "-an", vg], check=False)
        await host.arun(["vgremove", "-q", "-f", vg], check=False)
        for pv in node.resources.get("pvs", []):
            await host.arun(["pvremove", "-q", "-ff", "-y", pv], check=False)
            await host.arun(["losetup", "-d", pv], check=False)
        await unmount_tmpfs(node.storage_dir)


PROFILES: dict[str, type[LoopfileProfile] | type[RawdiskProfile] | type[LvmProfile]] = {
    "loopfile": LoopfileProfile,
    "rawdisk": RawdiskProfile,
    "lvm": LvmProfile,
}


def profile_for(name: str, deadlines: Deadlines | None = None) -> BackendProfile:
    """The profile of backend ``name``, with the deadlines of this environment (stretched under TCG) unless given."""
    try:
        kind = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(PROFILES)}") from None
    return kind(deadlines=deadlines or Deadlines.for_environment())
