"""Phase: the states storage can be in, attacked the way issue 15 found them (items 2-5, 13, 14).

Each attack drives real drivers over their sockets, on storage of its own, and checks what the driver
answers and what the storage holds afterwards:

* ``second-driver-mid-snapshot``: a second loopfile driver (another socket path) on the directory of one
  stopped in the middle of a snapshot (``snapshot.after_freeze:stop``: the source frozen, the record
  ``creating``) must exit at once naming the first's PID, and change nothing: the record stays ``creating``,
  the filesystem frozen; resumed, the first finishes a snapshot that is ready and whole. A third on the same
  socket path must exit too. After ``kill -9`` of the first, a new instance starts.
* ``second-driver-on-disks``: a second rawdisk driver on the same disks (its own snapshot directory) exits.
* ``snapshots-after-thin``: with ``--loopfile-overcommit 1.0``, once a thin volume took what GetCapacity
  offered, snapshots and clones are refused, and the thin volume can be written in full.
* ``overwrite-after-snapshot``: on reflink xfs, a thick volume snapshotted, the directory filled with a thick
  volume of exactly the reported capacity, then the first overwritten completely: no I/O error.
* ``raw-data-then-ext4``: a block volume written with raw data, unstaged, staged as ext4: FAILED_PRECONDITION
  and the image unchanged. (Known open until the node side asks ``backend.may_hold_data()``: counted, not a
  finding; once it passes, leaving it marked open is the finding.)
* ``delete-snapshot-when-full``: on a filesystem someone else filled, the driver restarts, and DeleteSnapshot
  answers OK and frees the space; after another restart the snapshot stays gone.
* ``damaged-images``: an image truncated or removed behind the driver's back is abnormal in ListVolumes and
  ControllerGetVolume; snapshotting or staging a volume whose image is gone is FAILED_PRECONDITION, not INTERNAL.

Rawdisk and lvm storage states have their regression tests beside the driver's (tests/csi, tests/kernel);
this phase runs on the host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
from grpclib.exceptions import GRPCError

from csi.gen.csi import v1 as csi
from e2e import leaks
from e2e.reliability.common import (
    DRIVER_NAME,
    MIB,
    NODE_ID,
    FilesystemNode,
    PhaseResult,
    filesystem_node,
    force_clean,
    loopfile_args,
)
from e2e.sim import host
from e2e.sim.driver import DriverInstance
from e2e.sim.stats import Stats

Mode = csi.VolumeCapabilityAccessModeMode
THIN = {"loopfile.localcsi.dev/provisioning": "thin"}
FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
#: Attacks whose defence another part of the driver still has to wire in: attack name -> what is missing.
KNOWN_OPEN: dict[str, str] = {}

Attack = Callable[[list[str]], Awaitable[None]]


def _access() -> csi.VolumeCapabilityAccessMode:
    return csi.VolumeCapabilityAccessMode(mode=Mode.SINGLE_NODE_WRITER)


def mount_cap(fs_type: str = "ext4") -> csi.VolumeCapability:
    return csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type=fs_type), access_mode=_access())


def block_cap() -> csi.VolumeCapability:
    return csi.VolumeCapability(block=csi.VolumeCapabilityBlockVolume(), access_mode=_access())


@contextlib.contextmanager
def armed(spec: str) -> Iterator[None]:
    """Drivers started inside carry ``LOCALCSI_FAULT=spec``."""
    os.environ["LOCALCSI_FAULT"] = spec
    try:
        yield
    finally:
        os.environ.pop("LOCALCSI_FAULT", None)


class Volume:
    """One volume driven as the sidecars and kubelet would, on ``node``."""

    def __init__(self, node: FilesystemNode, name: str, cap: csi.VolumeCapability, size: int) -> None:
        self.node, self.name, self.cap, self.size = node, name, cap, size
        self.volume_id = ""
        self.staging = node.kubelet_dir / "staging" / name
        self.target = node.kubelet_dir / "pods" / name / ("device" if cap.block is not None else "mount")

    @property
    def stubs(self) -> csi.ControllerStub:
        return self.node.driver.client().controller

    async def create(self, parameters: dict[str, str] | None = None) -> None:
        resp = await self.stubs.create_volume(csi.CreateVolumeRequest(
            name=self.name, capacity_range=csi.CapacityRange(required_bytes=self.size),
            volume_capabilities=[self.cap], parameters=parameters or {}), timeout=60)
        assert resp.volume is not None
        self.volume_id = resp.volume.volume_id

    async def stage(self, cap: csi.VolumeCapability | None = None) -> None:
        await anyio.Path(self.staging).mkdir(parents=True, exist_ok=True)
        await self.node.driver.client().node.node_stage_volume(csi.NodeStageVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(self.staging), volume_capability=cap or self.cap),
            timeout=60)

    async def publish(self) -> None:
        await anyio.Path(self.target.parent).mkdir(parents=True, exist_ok=True)
        await self.node.driver.client().node.node_publish_volume(csi.NodePublishVolumeRequest(
            volume_id=self.volume_id, staging_target_path=str(self.staging), target_path=str(self.target),
            volume_capability=self.cap), timeout=60)

    async def up(self, parameters: dict[str, str] | None = None) -> None:
        await self.create(parameters)
        await self.stage()
        await self.publish()

    async def unstage(self) -> None:
        node = self.node.driver.client().node
        await node.node_unpublish_volume(csi.NodeUnpublishVolumeRequest(volume_id=self.volume_id,
                                                                        target_path=str(self.target)), timeout=60)
        await node.node_unstage_volume(csi.NodeUnstageVolumeRequest(volume_id=self.volume_id,
                                                                    staging_target_path=str(self.staging)),
                                       timeout=60)

    @property
    def image(self) -> Path:
        return self.node.data_dir / f"{self.volume_id}.img"


def write_device(path: Path, size: int, seed: int, chunk: int = MIB) -> str:
    """Write ``size`` bytes through the block device at ``path`` (direct I/O); '' or the error's name."""
    buffer = mmap.mmap(-1, chunk)
    buffer.write(os.urandom(chunk))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        try:
            for offset in range(0, size, chunk):
                buffer[:8] = (seed + offset).to_bytes(8, "little")
                os.pwritev(fd, [buffer], offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    finally:
        buffer.close()
    return ""


async def raw_block_volume(node: FilesystemNode, name: str, size: int, written: int) -> Volume:
    """A block volume that had ``written`` bytes of raw data written through it, unstaged again."""
    vol = Volume(node, name, block_cap(), size)
    await vol.up()
    write_device(vol.target, written, 1)
    await vol.unstage()
    return vol


async def code_of(call: Awaitable[object]) -> tuple[str, str]:
    try:
        await call
    except GRPCError as exc:
        return exc.status.name, exc.message or ""
    return "OK", ""


async def capacity(driver: DriverInstance, parameters: dict[str, str] | None = None) -> int:
    resp = await driver.client().controller.get_capacity(csi.GetCapacityRequest(parameters=parameters or {}),
                                                         timeout=30)
    return int(resp.available_capacity)


async def snapshot(driver: DriverInstance, name: str, volume_id: str) -> tuple[str, csi.Snapshot | None]:
    try:
        resp = await driver.client().controller.create_snapshot(
            csi.CreateSnapshotRequest(name=name, source_volume_id=volume_id), timeout=120)
    except GRPCError as exc:
        return exc.status.name, None
    return "OK", resp.snapshot


def frozen(mount_point: Path) -> bool:
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            return exc.errno == errno.EBUSY
        fcntl.ioctl(fd, FITHAW, 0)
        return False
    finally:
        os.close(fd)


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")


async def refused(driver: DriverInstance, expected: str, findings: list[str], what: str) -> None:
    """``driver`` must exit with 2 before it answers, its log saying ``expected`` and showing no recovery."""
    code: int | None
    try:
        with anyio.fail_after(30):
            await driver.start()
            assert driver.process is not None
            code = await driver.process.wait()  # it answered: only a socket that was not its own may do that
    except RuntimeError:
        code = driver.process.returncode if driver.process is not None else None
    except TimeoutError:
        code = None
        await driver.kill9()
    log = driver.log_tail(200_000)
    if code != 2:
        findings.append(f"{what}: started (exit {code}) instead of exiting with 2")
    if expected not in log:
        findings.append(f"{what}: its log does not say {expected!r}")
    for sign in ("finishing interrupted", "thawed", "backend ready"):
        if sign in log:
            findings.append(f"{what}: it ran recovery on storage it does not own ({sign!r} in its log)")


async def second_driver_mid_snapshot(findings: list[str]) -> None:
    async with filesystem_node("state-lock", "ext4", 256 * MIB, start=False) as node:
        with armed("snapshot.after_freeze:stop"):
            await node.driver.start()
        assert node.driver.process is not None
        pid = node.driver.process.pid
        try:
            await held_mid_snapshot(node, pid, findings)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await node.driver.kill9()
        after = DriverInstance(node.root / "third", loopfile_args(node.data_dir, node.root / "third"), Stats())
        await anyio.Path(after.root).mkdir()
        try:
            await after.start()
        except RuntimeError as exc:
            findings.append(f"after kill -9 of the holder, a new instance could not take the directory: {exc}")
        finally:
            await after.kill9()
            after._close_log()


async def held_mid_snapshot(node: FilesystemNode, pid: int, findings: list[str]) -> None:
    """The first driver (``pid``) stops with its snapshot's source frozen; two more instances try their luck."""
    vol = Volume(node, "pvc-locked", mount_cap(), 64 * MIB)
    await vol.up()
    await anyio.Path(vol.target / "data.bin").write_bytes(os.urandom(MIB))
    taken: list[csi.Snapshot | None] = []

    async def take() -> None:
        taken.append((await snapshot(node.driver, "snap-in-flight", vol.volume_id))[1])

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        with anyio.fail_after(30):
            while not stopped(pid):  # a stopped process sends no event  # noqa: ASYNC110
                await anyio.sleep(0.05)
        records = list((node.data_dir / "snapshots").glob("lcs-*.json"))
        other = DriverInstance(node.root / "second", loopfile_args(node.data_dir, node.root / "second"), Stats())
        await anyio.Path(other.root).mkdir()
        await refused(other, f"is in use by PID {pid}", findings, "a second driver on the directory")
        same = DriverInstance(node.root, node.driver.argv_tail, Stats())
        node.driver.log_path.rename(node.root / "first.log")  # keep the first instance's log apart
        await refused(same, "another process is serving", findings, "a second driver on the socket")
        states = [json.loads(r.read_text())["state"] for r in records]
        if states != ["creating"]:
            findings.append(f"the live snapshot's record was changed by another instance: {states}")
        if not frozen(vol.staging):
            findings.append("another instance thawed the filesystem the live snapshot had frozen")
        os.kill(pid, signal.SIGCONT)
    snap = taken[0] if taken else None
    if snap is None or not snap.ready_to_use:
        findings.append("the first driver's snapshot did not finish ready after the others came and went")
    elif (node.data_dir / "snapshots" / f"{snap.snapshot_id}.img").stat().st_size != vol.size:
        findings.append("the finished snapshot's image is not whole")


@contextlib.asynccontextmanager
async def loop_disks(count: int, size: int) -> AsyncIterator[Path]:
    """``count`` loop devices over sparse files, reachable as ``<root>/dev/disk-N``; detached afterwards."""
    root = Path(tempfile.mkdtemp(prefix="rel-state-disks-"))
    devices = []
    try:
        (root / "dev").mkdir()
        for index in range(count):
            image = root / f"disk{index}.img"
            await anyio.to_thread.run_sync(host.make_sparse_file, image, size)
            devices.append(await anyio.to_thread.run_sync(host.attach_loop, image))
            (root / "dev" / f"disk-{index}").symlink_to(devices[-1])
        yield root
    finally:
        for info in await anyio.to_thread.run_sync(leaks.loops_backed_by, devices):
            await host.arun(["losetup", "-d", info.device], check=False)
        for device in devices:
            await host.arun(["losetup", "-d", device], check=False)
        await anyio.to_thread.run_sync(force_clean, root)


def rawdisk_driver(disks: Path, name: str) -> DriverInstance:
    directory = disks / name
    directory.mkdir()
    return DriverInstance(directory, ["--node-id", NODE_ID, "--driver-name", DRIVER_NAME, "--backend", "rawdisk",
                                      "--rawdisk-device", str(disks / "dev" / "disk-*"),
                                      "--rawdisk-snapshot-dir", str(directory / "snapshots")], Stats())


async def second_driver_on_disks(findings: list[str]) -> None:
    async with loop_disks(2, 64 * MIB) as disks:
        first = rawdisk_driver(disks, "first")
        try:
            await first.start()
            assert first.process is not None
            await refused(rawdisk_driver(disks, "second"), f"is in use by PID {first.process.pid}", findings,
                          "a second rawdisk driver on the same disks")
        finally:
            await first.kill9()
            first._close_log()


@contextlib.asynccontextmanager
async def node_on(kind: str, size: int, extra: list[str] | None = None) -> AsyncIterator[FilesystemNode]:
    async with filesystem_node(f"state-{kind}", kind, size, extra) as node:
        yield node


async def snapshots_after_thin(findings: list[str]) -> None:
    async with node_on("ext4", 320 * MIB) as node:
        source = await raw_block_volume(node, "pvc-source", 64 * MIB, 48 * MIB)
        thin = Volume(node, "pvc-thin", block_cap(), await capacity(node.driver, THIN))
        await thin.up(THIN)
        for index in range(3):
            code, _ = await snapshot(node.driver, f"snap-{index}", source.volume_id)
            if code != "RESOURCE_EXHAUSTED":
                findings.append(f"a snapshot after a thin volume took the rest of the space answered {code}")
        clone = csi.CreateVolumeRequest(
            name="pvc-clone", capacity_range=csi.CapacityRange(required_bytes=64 * MIB),
            volume_capabilities=[block_cap()], volume_content_source=csi.VolumeContentSource(
                volume=csi.VolumeContentSourceVolumeSource(volume_id=source.volume_id)))
        code, _ = await code_of(node.driver.client().controller.create_volume(clone, timeout=60))
        if code != "RESOURCE_EXHAUSTED":
            findings.append(f"a clone after a thin volume took the rest of the space answered {code}")
        error = await anyio.to_thread.run_sync(write_device, thin.target, thin.size, 2)
        if error:
            findings.append(f"the thin volume could not be written in full: {error}")


async def overwrite_after_snapshot(findings: list[str]) -> None:
    async with node_on("xfs", 1024 * MIB) as node:
        vol = Volume(node, "pvc-thick", block_cap(), 256 * MIB)
        await vol.up()
        write_device(vol.target, vol.size, 1)
        code, _ = await snapshot(node.driver, "snap-cow", vol.volume_id)
        if code != "OK":
            findings.append(f"the snapshot on reflink xfs answered {code}")
            return
        filler = Volume(node, "pvc-filler", mount_cap(), await capacity(node.driver))
        await filler.create()
        for chunk in (MIB, 64 * 1024):
            error = await anyio.to_thread.run_sync(write_device, vol.target, vol.size, chunk, chunk)
            if error:
                findings.append(f"overwriting the thick volume after its snapshot failed ({chunk}-byte writes): "
                                f"{error}")


async def raw_data_then_ext4(findings: list[str]) -> None:
    async with node_on("ext4", 256 * MIB) as node:
        vol = await raw_block_volume(node, "pvc-raw", 32 * MIB, 8 * MIB)
        before = hashlib.sha256(await anyio.Path(vol.image).read_bytes()).hexdigest()
        code, _ = await code_of(vol.stage(mount_cap("ext4")))
        after = hashlib.sha256(await anyio.Path(vol.image).read_bytes()).hexdigest()
        if code != "FAILED_PRECONDITION" or before != after:
            findings.append(f"staging raw block data as ext4 answered {code}"
                            f"{' and formatted it' if before != after else ''}")


async def delete_snapshot_when_full(findings: list[str]) -> None:
    async with node_on("ext4", 128 * MIB) as node:
        vol = await raw_block_volume(node, "pvc-data", 32 * MIB, 16 * MIB)
        code, snap = await snapshot(node.driver, "snap-full", vol.volume_id)
        if snap is None:
            findings.append(f"the snapshot to delete answered {code}")
            return
        await anyio.to_thread.run_sync(fill_filesystem, node.mount_point / "filler.bin")
        full = shutil.disk_usage(node.mount_point).free
        await node.driver.kill9()  # and the driver restarts while the filesystem is full
        try:
            await node.driver.start()
        except RuntimeError as exc:
            findings.append(f"the driver does not start on a full filesystem: {exc}")
            return
        code, message = await code_of(node.driver.client().controller.delete_snapshot(
            csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=60))
        if code != "OK":
            findings.append(f"DeleteSnapshot on a full filesystem answered {code}: {message}")
        elif shutil.disk_usage(node.mount_point).free < full + 8 * MIB:
            findings.append("DeleteSnapshot on a full filesystem freed nothing")
        await node.driver.kill9()
        await node.driver.start()
        listed = await node.driver.client().controller.list_snapshots(csi.ListSnapshotsRequest(), timeout=30)
        if any(e.snapshot and e.snapshot.snapshot_id == snap.snapshot_id for e in listed.entries):
            findings.append("the deleted snapshot came back after a restart")


def fill_filesystem(path: Path) -> None:
    """Write ``path`` until its filesystem has not one block left (1 MiB writes, then ever smaller ones)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        for chunk in (os.urandom(MIB), os.urandom(4096), os.urandom(512)):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


async def damaged_images(findings: list[str]) -> None:
    async with node_on("ext4", 256 * MIB) as node:
        controller = node.driver.client().controller
        volumes = {}
        for damage in ("truncated", "missing"):
            volumes[damage] = Volume(node, f"pvc-{damage}", mount_cap(), 32 * MIB)
            await volumes[damage].create()
        os.truncate(volumes["truncated"].image, 8 * MIB)
        volumes["missing"].image.unlink()
        listed = await controller.list_volumes(csi.ListVolumesRequest(), timeout=30)
        for entry in listed.entries:
            condition = entry.status.volume_condition if entry.status else None
            if condition is None or not condition.abnormal:
                findings.append(f"ListVolumes says volume {entry.volume.volume_id if entry.volume else '?'} with "
                                "a damaged image is healthy")
        for damage, vol in volumes.items():
            got = await controller.controller_get_volume(csi.ControllerGetVolumeRequest(volume_id=vol.volume_id),
                                                         timeout=30)
            if got.status is None or got.status.volume_condition is None or not got.status.volume_condition.abnormal:
                findings.append(f"ControllerGetVolume says the volume with a {damage} image is healthy")
        missing = volumes["missing"]
        for what, call in (("snapshot", snapshot(node.driver, "snap-missing", missing.volume_id)),
                           ("stage", code_of(missing.stage()))):
            code = (await call)[0]
            if code != "FAILED_PRECONDITION":
                findings.append(f"a {what} of a volume whose image is missing answered {code}")


ATTACKS: dict[str, Attack] = {
    "second-driver-mid-snapshot": second_driver_mid_snapshot,
    "second-driver-on-disks": second_driver_on_disks,
    "snapshots-after-thin": snapshots_after_thin,
    "overwrite-after-snapshot": overwrite_after_snapshot,
    "raw-data-then-ext4": raw_data_then_ext4,
    "delete-snapshot-when-full": delete_snapshot_when_full,
    "damaged-images": damaged_images,
}


async def run() -> PhaseResult:
    result = PhaseResult("states")
    outcomes: dict[str, str] = {}
    for name, attack in ATTACKS.items():
        findings: list[str] = []
        try:
            await attack(findings)
        except Exception as exc:
            findings.append(f"the attack itself failed: {type(exc).__name__}: {exc}")
        if name in KNOWN_OPEN:
            if findings:
                outcomes[name] = f"known open ({KNOWN_OPEN[name]})"
            else:
                outcomes[name] = "held"
                result.fail(f"{name} now holds: remove it from KNOWN_OPEN in e2e/reliability/states.py")
            continue
        outcomes[name] = "held" if not findings else "FAILED"
        for finding in findings:
            result.fail(f"{name}: {finding}")
    result.figures.update({
        "attacks": outcomes,
        "attacks_run": len(outcomes),
        "known_open": ", ".join(sorted(n for n, o in outcomes.items() if o.startswith("known open"))),
    })
    return result
