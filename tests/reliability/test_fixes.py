"""Regression tests for the driver bugs the reliability campaign found, and for the fault-point hook.

Each test fails on the code before its fix (see docs/reliability.md, "Bugs found").
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

import backends.metadata as metadata
import backends.nodeops as nodeops
from backends import errors, faults
from backends.base import AccessType, VolumeSpec
from backends.loopfile.backend import LoopfileBackend
from backends.loopfile.options import LoopfileOptions
from backends.system import loop
from backends.system.errors import SyscallError
from backends.system.testing import FakeRunner
from csi import wire
from csi.errors import status_for
from csi.gen.csi import v1 as csi
from csi.server import RequestCodec

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


# -- malformed protobuf: INVALID_ARGUMENT, never UNKNOWN -----------------------------------------------------------
@pytest.mark.parametrize("payload", [
    b"\x08" + b"\xff" * 11,          # varint longer than 10 bytes
    b"\x0a\x02\xc3\x28",             # name: invalid UTF-8
    b"\x0a\x05ab",                   # name: length past the end
    b"\x0b\x0c",                     # group wire type
    b"\x10\x01",                     # capacity_range (a message) sent as a varint
    b"\x0d\x01\x02\x03\x04",         # name (a string) sent as fixed32
])
def test_malformed_request_is_invalid_argument(payload: bytes) -> None:
    with pytest.raises(GRPCError) as caught:
        RequestCodec().decode(payload, csi.CreateVolumeRequest)
    assert caught.value.status is Status.INVALID_ARGUMENT


def test_list_volumes_with_wrong_wire_type_is_refused() -> None:
    with pytest.raises(ValueError, match="wire type"):
        wire.check(b"\x0a\x01\x05", csi.ListVolumesRequest)  # max_entries (int32) sent length-delimited
    with pytest.raises(ValueError, match="past the end"):
        wire.check(bytes.fromhex("1a0a0a0a0a0a"), csi.ListVolumesRequest)


def test_well_formed_requests_pass_the_wire_check() -> None:
    cap = csi.VolumeCapability(mount=csi.VolumeCapabilityMountVolume(fs_type="ext4", mount_flags=["noatime"]),
                               access_mode=csi.VolumeCapabilityAccessMode(mode=csi.VolumeCapabilityAccessModeMode(1)))
    request = csi.CreateVolumeRequest(
        name="pvc-1", capacity_range=csi.CapacityRange(required_bytes=64 * MIB, limit_bytes=-1),
        volume_capabilities=[cap, cap], parameters={"a": "b"}, secrets={"s": "t"},
        accessibility_requirements=csi.TopologyRequirement(requisite=[csi.Topology(segments={"k": "v"})]))
    decoded = RequestCodec().decode(bytes(request), csi.CreateVolumeRequest)
    assert decoded == request
    wire.check(bytes(csi.ListVolumesRequest(max_entries=-5, starting_token="x")), csi.ListVolumesRequest)


# -- full filesystem: RESOURCE_EXHAUSTED, never a half-written record ----------------------------------------------
def test_metadata_write_on_full_filesystem_is_capacity_exhausted(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("backends.system.files.os.write", full)
    with pytest.raises(errors.CapacityExhausted):
        metadata.write_record(str(tmp_path / "r.json"), {"schema": 1})
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    assert status_for(errors.CapacityExhausted("x")) is Status.RESOURCE_EXHAUSTED


def test_short_writes_still_produce_a_whole_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def one_byte(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:1]))

    monkeypatch.setattr("backends.system.files.os.write", one_byte)
    metadata.write_record(str(tmp_path / "r.json"), {"schema": 1, "name": "x" * 50})
    assert metadata.load_record(str(tmp_path / "r.json"), 1)["name"] == "x" * 50


@pytest.mark.anyio
async def test_delete_volume_works_on_a_full_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LoopfileBackend("n1", LoopfileOptions(directory=str(tmp_path)), FakeRunner(lambda argv: (0, "", "")))
    monkeypatch.setattr("backends.loopfile.backend.require_tools", lambda names: None)
    await backend.start()
    volume = await backend.create_volume(VolumeSpec("pvc-full", 4 * MIB, 0, {"loopfile.localcsi.dev/provisioning":
                                                                             "thin"}, AccessType.BLOCK, "", None))

    def no_room(path: str, record: object) -> None:
        raise errors.CapacityExhausted("no room to write metadata")

    monkeypatch.setattr("backends.loopfile.backend.write_record", no_room)
    await backend.delete_volume(volume.volume_id)
    assert not list(tmp_path.glob(f"{volume.volume_id}.*"))
    with pytest.raises(errors.VolumeNotFound):
        await backend.get_volume(volume.volume_id)


# -- a stats call racing an unpublish: NOT_FOUND, not INTERNAL ----------------------------------------------------
@pytest.mark.anyio
async def test_path_usage_of_a_path_removed_meanwhile_is_none(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    async def vanished(path: str) -> object:
        raise SyscallError("statvfs", errno.ENOENT, path)

    monkeypatch.setattr(nodeops, "filesystem_stats", vanished)
    assert await nodeops.path_usage(str(tmp_path)) is None


# -- loop devices running out (for real: tests/kernel/test_loop_exhaustion.py; here a fake ioctl) -------------------
@pytest.mark.root
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EINVAL])  # EINVAL: what kernel 6.1 answers when full
def test_no_free_loop_device_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def exhausted(fd: int, request: int, *args: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("backends.system.loop.fcntl.ioctl", exhausted)
    with pytest.raises(errors.CapacityExhausted) as caught:
        loop._get_free()
    assert status_for(caught.value) is Status.RESOURCE_EXHAUSTED


# -- the fault-point hook -----------------------------------------------------------------------------------------
def test_fault_point_is_a_no_op_unless_armed() -> None:
    faults.arm("")
    faults.fault_point("create.after_meta")  # still alive
    with pytest.raises(ValueError, match="expected <point>:kill"):
        faults.arm("create.after_meta")


def test_an_armed_fault_point_kills_the_process() -> None:
    code = "from backends import faults; faults.arm('x.y:kill'); faults.fault_point('w'); print('ok', flush=True); " \
           "faults.fault_point('x.y'); print('survived')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == -9
    assert done.stdout == "ok\n"


@pytest.mark.anyio
async def test_a_path_removed_meanwhile_holds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    async def vanished(path: str) -> object:
        raise SyscallError("stat", errno.ENOENT, path)

    monkeypatch.setattr("backends.system.mount.path_state", vanished)
    assert (await nodeops.look("/somewhere", nodeops.Own("lcv-x"))).holds is nodeops.Holds.NOTHING
    assert await nodeops.path_usage("/somewhere") is None


# -- a loop device whose detach the kernel deferred is never handed out again ------------------------------------
@pytest.mark.root
@pytest.mark.anyio
async def test_attach_after_a_deferred_detach_gives_a_live_device(tmp_path: Path) -> None:
    """Another process (a prober, an orphaned mkfs of a killed driver) holds the device open while it is detached:
    the kernel keeps it bound (autoclear) until that last close, then drops it. A NodeStage retry must not mkfs it."""
    from backends.system.runner import ProcessRunner

    backend = LoopfileBackend("n1", LoopfileOptions(directory=str(tmp_path / "volumes")), ProcessRunner())
    await backend.start()
    volume = await backend.create_volume(VolumeSpec("pvc-deferred", 16 * MIB, 0, {}, fs_type="ext4"))
    first = await backend.attach(volume.volume_id, readonly=False)
    holder = os.open(first, os.O_RDONLY)
    devices = {first}
    try:
        with pytest.raises(errors.VolumeInUse):
            await backend.detach(volume.volume_id)
        again = await backend.attach(volume.volume_id, readonly=False)
        devices.add(again)
    finally:
        os.close(holder)  # the kernel now tears the first device down
    try:
        fd = os.open(again, os.O_RDONLY)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
        assert size == 16 * MIB, f"attach handed out {again}, a device being detached (now {size} bytes)"
    finally:
        for device in devices:
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


@pytest.mark.root
@pytest.mark.anyio
async def test_detach_waits_out_a_prober_that_holds_the_device_for_a_moment(tmp_path: Path) -> None:
    """NodeUnstage answered FAILED_PRECONDITION when a prober (blkid, lsblk) had the device open at that instant."""
    import threading

    image = tmp_path / "probed.img"
    with image.open("wb") as handle:
        handle.truncate(8 * MIB)
    device = await loop.attach(str(image))
    holder = os.open(device.path, os.O_RDONLY)
    closer = threading.Timer(0.3, os.close, args=(holder,))
    closer.start()
    try:
        await loop.detach(device.path)  # before the fix: VolumeInUse("... still open by another process ...")
        assert await loop.get_device(device.path) is None
    finally:
        closer.join()
        subprocess.run(["losetup", "-d", device.path], check=False, capture_output=True)
