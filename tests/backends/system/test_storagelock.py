"""Storage locks: flock on a directory or a device node, held until the process dies, naming the holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends.errors import StorageInUse
from backends.system import storagelock

REPO = Path(__file__).resolve().parents[3]
HOLDER = """
import sys, time
from backends.system import storagelock
lock = storagelock.lock_directory(sys.argv[1], "the test directory")
print("locked", flush=True)
time.sleep(120)
"""


def test_proc_locks_lines_name_the_holder_of_that_inode_only() -> None:
    dev = os.makedev(0xFE, 0x01)
    text = "\n".join([
        "1: FLOCK  ADVISORY  WRITE 4242 fe:01:1234 0 EOF",
        "2: FLOCK  ADVISORY  WRITE 77 fe:01:9999 0 EOF",         # another inode
        "3: POSIX  ADVISORY  WRITE 88 fe:01:1234 0 EOF",         # a POSIX lock, not ours
        "4: -> FLOCK  ADVISORY  WRITE 99 fe:01:1234 0 EOF",      # a waiter
        "5: FLOCK  ADVISORY  WRITE 0 fe:01:1234 0 EOF",          # an owner this PID namespace cannot see
    ])
    assert storagelock.parse_locks(text, dev, 1234) == [4242]
    assert storagelock.parse_locks(text, os.makedev(8, 1), 1234) == []


def test_the_holder_is_named_from_proc_locks_then_from_the_directory() -> None:
    assert storagelock.describe_holder([31], "99 other-host") == "PID 31"
    assert storagelock.describe_holder([], "99 node-a") == "PID 99 on node-a (in another PID namespace)"
    assert storagelock.describe_holder([], "") == "a process in another PID namespace"


def _hold(directory: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


def test_a_held_directory_refuses_another_process_until_it_is_killed(tmp_path: Path) -> None:
    child = _hold(tmp_path)
    try:
        with pytest.raises(StorageInUse, match=f"the test directory is in use by PID {child.pid} "):
            storagelock.lock_directory(str(tmp_path), "the test directory")
        assert list(tmp_path.iterdir()) == []  # no lock file: the directory itself is locked
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
    lock = storagelock.lock_directory(str(tmp_path), "the test directory")  # kill -9 released it
    lock.release()


def test_one_held_device_means_none_is_kept(tmp_path: Path) -> None:
    paths = [tmp_path / name for name in ("a", "b", "c")]
    for path in paths:
        path.write_bytes(b"")
    held = storagelock.lock_devices([str(paths[1])], "b")
    try:
        started = time.monotonic()
        with pytest.raises(StorageInUse, match=f"is in use by PID {os.getpid()}"):
            storagelock.lock_devices([str(p) for p in paths], "the disks")
        assert time.monotonic() - started < 1.0  # never waits
        # "a" was locked first and let go again: it can be taken now.
        storagelock.lock_devices([str(paths[0])], "a").release()
    finally:
        held.release()
    lock = storagelock.lock_devices([str(p) for p in paths], "the disks")
    assert lock.paths == tuple(str(p) for p in paths)
    lock.drop(str(paths[0]))
    assert not lock.holds(str(paths[0])) and lock.holds(str(paths[1]))
    lock.release()
    assert lock.paths == ()
