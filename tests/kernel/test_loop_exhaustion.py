"""The kernel runs out of loop devices for real (kernel lane, loop module loaded with ``max_part=255``).

On Debian's 6.1 kernel ``max_loop`` is *not* a limit for ``LOOP_CTL_GET_FREE``:
it only bounds the devices created when a ``/dev/loopN`` node is opened, and
GET_FREE keeps adding devices past it (seen in the lane: ``max_loop=4``, twelve
devices attached). The hard limit is the minor-number space, 2^20 minors shared
out ``2^part_shift`` per device: with ``max_part=255`` that is 4,096 devices,
few enough to fill in about a minute under TCG. ``hack/reliability`` boots the
lane with ``LOCALCSI_VMTEST_LOOP_OPTIONS=max_part=255`` for this test; without
it (every minor free: a million devices) the test is skipped, saying so.

Every free loop device is taken, then the loopfile driver's NodeStageVolume must
answer RESOURCE_EXHAUSTED and leave nothing attached or mounted, a volume staged
before keeps its data and takes writes, and freeing one device lets the stage succeed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status

from e2e.leaks import loops_backed_under, mounts_under
from tests.lifecycle import Lifecycle, expect
from tests.support import MIB, DriverProcess, assert_no_leaks, connect, mount_cap, sparse_file

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(900)]

LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
MINORS = 1 << 20
MAX_DEVICES_TO_FILL = 8192


def loop_device_space() -> int:
    """How many loop devices the loaded module can make (minors / minors per device)."""
    max_part = int(Path("/sys/module/loop/parameters/max_part").read_text())
    part_shift = max_part.bit_length() if max_part > 0 else 0
    return MINORS >> part_shift


class Hog:
    """Binds every free loop device to one small file until the kernel has none left."""

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self.held: list[int] = []  # numbers of the devices bound here (bound without autoclear: no fd kept)
        self.errno = 0

    def fill(self, limit: int) -> None:
        backing_fd = os.open(self.backing, os.O_RDWR)
        control = os.open(LOOP_CONTROL, os.O_RDWR)
        try:
            while len(self.held) < limit:
                try:
                    number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                except OSError as exc:
                    self.errno = exc.errno or 0
                    return
                fd = os.open(f"/dev/loop{number}", os.O_RDWR)
                try:
                    fcntl.ioctl(fd, LOOP_SET_FD, backing_fd)
                except OSError:
                    continue  # someone else took it first
                finally:
                    os.close(fd)
                self.held.append(number)
        finally:
            os.close(control)
            os.close(backing_fd)

    def release_one(self) -> None:
        fd = os.open(f"/dev/loop{self.held.pop()}", os.O_RDWR)
        try:
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, LOOP_CLR_FD)
        finally:
            os.close(fd)

    def release_all(self) -> None:
        while self.held:
            self.release_one()


@contextlib.contextmanager
def hog() -> Iterator[Hog]:
    with sparse_file("loop-hog-", MIB) as backing:
        taker = Hog(backing)
        try:
            yield taker
        finally:
            taker.release_all()


@pytest.fixture
def loop_space() -> int:
    space = loop_device_space()
    if space > MAX_DEVICES_TO_FILL:
        pytest.skip(f"the loop module has room for {space} devices (max_part=0): too many to fill; run it with "
                    "LOCALCSI_VMTEST_LOOP_OPTIONS=max_part=255 hack/vmtest tests/kernel/test_loop_exhaustion.py")
    return space


async def test_no_free_loop_device_is_resource_exhausted_and_spares_staged_volumes(loop_space: int) -> None:
    driver = DriverProcess(Path(tempfile.mkdtemp(prefix="loop-exhaust-driver-")))
    driver.start(timeout=120)
    try:
        async with connect(driver.socket_path) as c:
            keeper = Lifecycle(c, driver, "pvc-keeper", mount_cap("ext4"), 32 * MIB)
            await keeper.up()
            kept = os.urandom(MIB)
            keeper.write(kept)
            waiting = Lifecycle(c, driver, "pvc-waiting", mount_cap("ext4"), 32 * MIB)
            await waiting.create()
            with hog() as taker:
                started = time.monotonic()
                taker.fill(loop_space)
                took = time.monotonic() - started
                print(f"took {len(taker.held)} loop devices in {took:.1f} s; LOOP_CTL_GET_FREE then failed with "
                      f"{errno.errorcode.get(taker.errno, taker.errno)} (device space {loop_space})")
                assert taker.errno != 0, "the kernel never ran out of loop devices"

                refused = await expect(Status.RESOURCE_EXHAUSTED, waiting.stage(await waiting.attach()))
                assert "loop device" in (refused.message or "")
                image = str(driver.data_dir / f"{waiting.volume_id}.img")
                assert image not in [info.backing_file for info in loops_backed_under(driver.data_dir)]
                assert mounts_under(waiting.staging.parent) == []
                # The staged volume is untouched: its data reads back and it takes writes.
                assert keeper.read(len(kept)) == kept
                keeper.write(kept[::-1])
                assert keeper.read(len(kept)) == kept[::-1]

                taker.release_one()  # one device free again: the retried stage succeeds
                await waiting.stage(await waiting.attach())
                await waiting.publish()
                waiting.write(kept)
                assert waiting.read(len(kept)) == kept
            await waiting.down()
            await keeper.down()
        assert_no_leaks(driver)
    finally:
        driver.cleanup()
