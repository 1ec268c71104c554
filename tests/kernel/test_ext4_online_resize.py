"""ext4 grows online on a loop device (needs CAP_SYS_RESOURCE: kernel lane)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from backends.system import fs, loop, mkfs, mount
from backends.system.runner import ProcessRunner

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio]

MIB = 1024**2


async def test_ext4_grows_online_on_a_loop_device_with_data_intact() -> None:
    runner = ProcessRunner()
    scratch = Path(tempfile.mkdtemp(prefix="ext4-grow-"))
    image, target = scratch / "disk.img", scratch / "mnt"
    target.mkdir()
    with image.open("wb") as handle:
        handle.truncate(64 * MIB)
    device = await loop.attach(str(image))
    mounted = False
    try:
        await mkfs.make_filesystem(runner, device.path, "ext4")
        await mount.mount(device.path, str(target), "ext4")
        mounted = True
        payload = os.urandom(4 * MIB)
        (target / "data").write_bytes(payload)
        before = os.statvfs(target)

        with image.open("r+b") as handle:
            handle.truncate(256 * MIB)
        assert await loop.refresh_capacity(device.path) == 256 * MIB
        assert await fs.grow_filesystem(runner, device.path, str(target), "ext4") is True

        after = os.statvfs(target)
        assert after.f_blocks * after.f_frsize > 3 * before.f_blocks * before.f_frsize
        assert (target / "data").read_bytes() == payload
        assert await fs.grow_filesystem(runner, device.path, str(target), "ext4") is False
    finally:
        if mounted:
            await mount.unmount(str(target))
        await loop.detach(device.path)
        image.unlink()
        target.rmdir()
        scratch.rmdir()
