"""``may_hold_data``: a loopfile volume that has held data is never taken for blank, even when no signature says
what the data is (a raw block volume), while a first format cut short by a driver crash is still retried."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.base import AccessType, ContentSource, SourceKind, VolumeSpec
from backends.loopfile.backend import LoopfileBackend
from tests.backends.loopfile.support import started

pytestmark = [pytest.mark.anyio, pytest.mark.root]
MIB = 1 << 20


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LoopfileBackend]:
    b = await started(tmp_path / "volumes")
    try:
        yield b
    finally:
        for dev in list(b._loops.values()):
            subprocess.run(["losetup", "-d", dev.path], check=False, capture_output=True)


def write(device: str, data: bytes, offset: int = 8 * MIB) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


async def test_raw_data_seen_at_detach_is_remembered(backend: LoopfileBackend, tmp_path: Path) -> None:
    volume = await backend.create_volume(VolumeSpec("pvc-raw", 32 * MIB, 0, {}, AccessType.BLOCK))
    assert not await backend.may_hold_data(volume.volume_id)
    device = await backend.attach(volume.volume_id, readonly=False)
    assert not await backend.may_hold_data(volume.volume_id)  # nothing written yet
    write(device, os.urandom(MIB))  # a database's pages: no signature anywhere
    await backend.detach(volume.volume_id)
    assert await backend.may_hold_data(volume.volume_id)
    assert not await backend.reads_as_zeros(volume.volume_id)
    again = await started(tmp_path / "volumes")  # kept in the volume's record
    assert await again.may_hold_data(volume.volume_id)


async def test_a_first_format_cut_short_by_a_crash_is_not_data(backend: LoopfileBackend, tmp_path: Path) -> None:
    """The driver died in the middle of the first mkfs: the device stays attached, and the restarted driver's
    retry must format again (the partial format is ours), not refuse the volume forever."""
    volume = await backend.create_volume(VolumeSpec("pvc-crash", 32 * MIB, 0, {}, fs_type="ext4"))
    device = await backend.attach(volume.volume_id, readonly=False)
    write(device, b"\x01" * 65536, 0)  # half a format
    restarted = await started(tmp_path / "volumes")  # finds the attached device again
    assert await restarted.attach(volume.volume_id, readonly=False) == device
    assert not await restarted.may_hold_data(volume.volume_id)


async def test_data_written_behind_the_drivers_back_is_seen_at_attach(backend: LoopfileBackend) -> None:
    volume = await backend.create_volume(VolumeSpec("pvc-foreign", 32 * MIB, 0, {}, fs_type="ext4"))
    with open(backend._image(volume.volume_id), "r+b") as image:
        image.seek(4 * MIB)
        image.write(os.urandom(4096))
    await backend.attach(volume.volume_id, readonly=False)
    assert await backend.may_hold_data(volume.volume_id)


async def test_copies_hold_their_sources_data(backend: LoopfileBackend) -> None:
    source = await backend.create_volume(VolumeSpec("pvc-src", 32 * MIB, 0, {}, fs_type="ext4"))
    snap = await backend.create_snapshot(source.volume_id, "snap", {})
    restored = await backend.create_volume(VolumeSpec("pvc-restored", 32 * MIB, 0, {}, fs_type="ext4",
                                                      source=ContentSource(SourceKind.SNAPSHOT, snap.snapshot_id)))
    assert await backend.may_hold_data(restored.volume_id)
    assert not await backend.may_hold_data(source.volume_id)


async def test_attach_and_detach_work_on_a_full_filesystem(backend: LoopfileBackend,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from backends import errors

    volume = await backend.create_volume(VolumeSpec("pvc-full", 32 * MIB, 0, {}, AccessType.BLOCK))
    device = await backend.attach(volume.volume_id, readonly=False)
    write(device, os.urandom(MIB))

    def no_room(path: str, record: object) -> None:
        raise errors.CapacityExhausted("no room to write metadata")

    monkeypatch.setattr("backends.loopfile.backend.write_record", no_room)
    await backend.detach(volume.volume_id)  # NodeUnstage on a full filesystem must not fail
    assert await backend.may_hold_data(volume.volume_id)
