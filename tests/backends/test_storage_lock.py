"""One driver instance per storage: a second ``localcsi serve`` on the same storage exits at once, touching nothing.

The first driver is held in the middle of a snapshot (``snapshot.after_freeze:stop``: the process stops with
the source's filesystem frozen and the snapshot's record still ``creating``), as a DaemonSet update with surge
starts the new pod beside the old one. The second must not run crash recovery on the live instance's work:
before the lock it "finished" (removed) the in-flight snapshot and thawed the frozen filesystem, and with
another socket path it then served the same volumes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from backends.system import reflink
from csi.gen.csi import v1 as csi
from tests.backends.rawdisk.support import FakeDisks, fake_disks, rawdisk_driver
from tests.lifecycle import PAYLOAD, Lifecycle
from tests.support import MIB, DriverProcess, connect, force_cleanup, mount_cap

pytestmark = [pytest.mark.anyio, pytest.mark.root]

disks = pytest.fixture(fake_disks, name="disks")


def stopped(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0] in ("T", "t")


def wait_until_stopped(proc: DriverProcess, timeout: float = 30.0) -> None:
    assert proc.proc is not None
    deadline = time.monotonic() + timeout
    while not stopped(proc.proc.pid):
        assert proc.proc.poll() is None, proc.log(4000)
        assert time.monotonic() < deadline, "the driver never reached its stop point"
        time.sleep(0.05)


def resume(proc: DriverProcess) -> None:
    if proc.proc is not None and proc.proc.poll() is None:
        proc.proc.send_signal(signal.SIGCONT)


def is_frozen(mount_point: Path) -> bool:
    """Whether the filesystem at ``mount_point`` is frozen now (FIFREEZE of a frozen one is EBUSY)."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.ioctl(fd, reflink.FIFREEZE, 0)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return True
            raise
        fcntl.ioctl(fd, reflink.FITHAW, 0)  # it was not: undo our own freeze
        return False
    finally:
        os.close(fd)


def refused(second: DriverProcess, first: DriverProcess, *, why: str) -> str:
    """Start ``second``; it must exit at once (well within its start timeout) and say ``why``."""
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="driver exited with 2"):
        second.start(timeout=30)
    assert time.monotonic() - started < 15
    log = second.log()
    assert why in log, log
    assert "loopfile backend ready" not in log and "finishing interrupted" not in log and "thawed" not in log
    return log


@pytest.fixture
def first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DriverProcess]:
    monkeypatch.setenv("LOCALCSI_FAULT", "snapshot.after_freeze:stop,rawdisk.snapshot.after_freeze:stop")
    proc = DriverProcess(tmp_path / "first")
    try:
        yield proc
    finally:
        resume(proc)
        proc.kill9()
        force_cleanup(proc.root, proc.data_dir)


async def test_a_second_driver_on_the_directory_of_one_mid_snapshot_exits_and_touches_nothing(
        first: DriverProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first.start()
    monkeypatch.delenv("LOCALCSI_FAULT")
    assert first.proc is not None
    async with connect(first.socket_path) as c:
        vol = Lifecycle(c, first, "pvc-locked", mount_cap("ext4"), 64 * MIB)
        await vol.up()
        vol.write()
        snapshot: list[csi.Snapshot] = []

        async def take() -> None:
            resp = await c.controller.create_snapshot(csi.CreateSnapshotRequest(name="snap-in-flight",
                                                                                source_volume_id=vol.volume_id),
                                                      timeout=120)
            assert resp.snapshot is not None
            snapshot.append(resp.snapshot)

        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await anyio.to_thread.run_sync(wait_until_stopped, first)
            records = list((first.data_dir / "snapshots").glob("lcs-*.json"))
            assert [json.loads(r.read_text())["state"] for r in records] == ["creating"]
            assert is_frozen(vol.staging)

            # Another socket path, the same directory: the lock stops it before recovery.
            other = DriverProcess(tmp_path / "second", extra_args=("--loopfile-dir", str(first.data_dir)))
            refused(other, first, why=f"is in use by PID {first.proc.pid}")
            # The same socket path: the live socket stops it before the backend starts.
            same = DriverProcess(first.root)
            same_log_before = first.log()
            same.start(timeout=30)  # returns at once: the first driver's socket answers
            assert same.proc is not None and same.proc.wait(30) == 2
            assert f"another process is serving on {first.socket_path}" in first.log()[len(same_log_before):]

            # Nothing of the first instance's was touched: its snapshot is still in flight, still frozen.
            assert [json.loads(r.read_text())["state"] for r in records] == ["creating"]
            assert is_frozen(vol.staging)
            resume(first)
        assert snapshot and snapshot[0].ready_to_use
        image = first.data_dir / "snapshots" / f"{snapshot[0].snapshot_id}.img"
        assert image.stat().st_size == vol.size
        assert not is_frozen(vol.staging)
        vol.write(PAYLOAD)  # writes go on
    # kill -9 releases the lock at once: the next instance starts and finds the snapshot.
    first.kill9()
    second = DriverProcess(tmp_path / "third", extra_args=("--loopfile-dir", str(first.data_dir)))
    try:
        second.start()
        async with connect(second.socket_path) as c:
            listed = await c.controller.list_snapshots(csi.ListSnapshotsRequest())
            assert [e.snapshot.snapshot_id for e in listed.entries if e.snapshot] == [snapshot[0].snapshot_id]
    finally:
        second.kill9()


async def test_a_second_driver_on_the_same_disks_exits(disks: FakeDisks, tmp_path: Path) -> None:
    """Two rawdisk drivers with one allow-list (each its own snapshot directory): the disks' locks stop the
    second; with the same snapshot directory, the directory's lock stops it first."""
    for name in ("a", "b"):
        disks.add(name, 64 * MIB)
    first = rawdisk_driver(disks, snapshots=True)
    try:
        first.start()
        assert first.proc is not None
        for root, snapshot_dir in (("second", tmp_path / "elsewhere"), ("third", disks.root / "snapshots")):
            other = DriverProcess(tmp_path / root, backend="rawdisk", extra_args=(
                "--rawdisk-device", disks.pattern, "--rawdisk-snapshot-dir", str(snapshot_dir)))
            refused(other, first, why=f"is in use by PID {first.proc.pid}")
        async with connect(first.socket_path) as c:
            created = await c.controller.create_volume(csi.CreateVolumeRequest(
                name="pvc-after", capacity_range=csi.CapacityRange(required_bytes=32 * MIB),
                volume_capabilities=[mount_cap()]))
            assert created.volume is not None
    finally:
        first.kill9()
    # The lock went with the process: a new instance takes the disks.
    again = rawdisk_driver(disks, snapshots=True)
    try:
        again.start()
    finally:
        again.kill9()


@dataclass
class PoolsDriver(DriverProcess):
    """A driver configured by a pools file instead of the backend flags."""

    config: Path = Path()

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "csi.cli", "serve", "--endpoint", self.endpoint, "--node-id", self.node_id,
                "--log-level", "DEBUG", "--log-format", "json", "--config", str(self.config)]


async def test_a_driver_whose_pool_another_driver_holds_exits(tmp_path: Path) -> None:
    """With a pools file: one pool's storage held by another instance ends start-up, even though the other
    pool is free (two drivers on one node must not run side by side)."""
    held, free = tmp_path / "held", tmp_path / "free"
    config = tmp_path / "pools.toml"
    config.write_text(f'default = "bulk"\n[pools.bulk]\nbackend = "loopfile"\ndirectory = "{free}"\n'
                      f'[pools.shared]\nbackend = "loopfile"\ndirectory = "{held}"\n')
    first = DriverProcess(tmp_path / "first", extra_args=("--loopfile-dir", str(held)))
    second = PoolsDriver(tmp_path / "second", config=config)
    try:
        first.start()
        assert first.proc is not None
        refused(second, first, why=f"is in use by PID {first.proc.pid}")
        assert not (free / "snapshots").exists()  # the free pool was not started either
    finally:
        first.kill9()
        second.kill9()
