"""rawdisk snapshots hold room in the snapshot directory while they copy: one that is admitted never runs out
of room half-way because another snapshot was admitted beside it."""

from __future__ import annotations

import os

import anyio
import pytest

from backends import errors
from backends.base import AccessType, VolumeSpec
from backends.system import blockcopy
from tests.backends.rawdisk.support import MIB, FakeDisks, fake_disks, running, sh

pytestmark = [pytest.mark.anyio, pytest.mark.root]

disks = pytest.fixture(fake_disks, name="disks")


async def test_a_second_snapshot_is_refused_while_the_first_holds_the_room(disks: FakeDisks,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        disks.add(name, 64 * MIB)
    room = disks.root / "snapshots"
    room.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(room))  # room for one partition, not two
    try:
        async with running(disks, room) as backend:
            volumes = [await backend.create_volume(VolumeSpec(f"pvc-{n}", 0, 0, {}, AccessType.BLOCK))
                       for n in ("a", "b")]
            for volume in volumes:  # nearly full of data that does not compress into holes
                device = await backend.attach(volume.volume_id, readonly=False)
                with open(device, "r+b") as handle:
                    handle.write(os.urandom(56 * MIB))
                await backend.detach(volume.volume_id)
            copying, release = anyio.Event(), anyio.Event()
            real_copy = blockcopy.copy

            async def held_copy(source: blockcopy.Range, target: blockcopy.Range) -> blockcopy.CopyStats:
                if not copying.is_set():
                    copying.set()
                    await release.wait()
                return await real_copy(source, target)

            monkeypatch.setattr(blockcopy, "copy", held_copy)
            outcome: dict[str, object] = {}

            async def first() -> None:
                outcome["first"] = await backend.create_snapshot(volumes[0].volume_id, "snap-first", {})

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await copying.wait()
                with pytest.raises(errors.CapacityExhausted, match="not enough space"):
                    await backend.create_snapshot(volumes[1].volume_id, "snap-second", {})
                release.set()
            assert [s.name for s in await backend.list_snapshots()] == ["snap-first"]
            # Its room is free again once the first is done: the data took what it took, the rest is back.
            assert await backend._snapshot_space.available() > 32 * MIB
    finally:
        sh("umount", str(room))
