"""A block volume written with raw data (no signature), unstaged, then staged as ext4: refused, never formatted.

The backend knows the image has held data (``Backend.may_hold_data``); NodeStage must then format only a
volume that provably reads as zeros, and treat a blank probe as data without a signature.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from grpclib.const import Status

from tests.lifecycle import Lifecycle, expect
from tests.support import MIB, DriverProcess, block_cap, connect, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]


async def test_raw_block_data_is_never_formatted(driver: DriverProcess) -> None:
    async with connect(driver.socket_path) as c:
        raw = Lifecycle(c, driver, "pvc-raw", block_cap(), 32 * MIB)
        await raw.up()
        data = os.urandom(8 * MIB)  # a database's pages: no filesystem, no signature
        fd = os.open(raw.target, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        await raw.unpublish()
        await raw.unstage()
        image = driver.data_dir / f"{raw.volume_id}.img"
        before = hashlib.sha256(image.read_bytes()).hexdigest()
        as_fs = Lifecycle(c, driver, "pvc-raw", mount_cap("ext4"), 32 * MIB)
        as_fs.volume_id = raw.volume_id
        error = await expect(Status.FAILED_PRECONDITION, as_fs.stage())
        assert "data" in (error.message or "")
        assert hashlib.sha256(image.read_bytes()).hexdigest() == before
