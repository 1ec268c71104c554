"""Test support: a real driver process, a gRPC client for it, and leak checks.

Cleanup and leak checks use the plain system tools (``findmnt``-free
mountinfo reading, ``umount``, ``losetup``) rather than the code under test,
so a bug in the driver cannot hide its own leaks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from grpclib.client import Channel

from csi.gen.csi import v1 as csi

NODE_ID = "test-node-1"
GIB = 1 << 30
MIB = 1 << 20


def mountinfo_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(esc, ch)
        points.append(point)
    return points


def mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    return [p for p in mountinfo_points() if p.startswith(prefix) or p == str(root)]


def loops_backed_by(directory: Path) -> list[tuple[str, str]]:
    """(device, backing file) for every loop device whose backing file lies in ``directory``."""
    found = []
    prefix = str(directory).rstrip("/") + "/"
    for entry in Path("/sys/block").glob("loop*"):
        backing = entry / "loop" / "backing_file"
        try:
            target = backing.read_text().strip()
        except OSError:
            continue
        if target.startswith(prefix):
            found.append((f"/dev/{entry.name}", target))
    return found


def force_cleanup(root: Path, data_dir: Path) -> None:
    # The loop devices first: once a lazy unmount detaches the filesystem their files live on, the kernel names
    # those files relative to it and they no longer look like ours.
    loops = loops_backed_by(data_dir)
    for point in sorted(mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    for device, _ in loops:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


@dataclass
class DriverProcess:
    """``localcsi serve`` as a child process with its own socket, data dir and kubelet-like dir."""

    root: Path
    node_id: str = NODE_ID
    backend: str = "loopfile"
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> str:
        return str(self.root / "csi.sock")

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def data_dir(self) -> Path:
        return self.root / "volumes"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def block_dir(self) -> Path:
        """Where the driver binds staged block volumes' devices: beside its socket, or below ``--kubelet-dir``."""
        return self.root / "block"

    @property
    def log_path(self) -> Path:
        return self.root / "driver.log"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "csi.cli", "serve",
            "--endpoint", self.endpoint,
            "--node-id", self.node_id,
            "--backend", self.backend,
            "--loopfile-dir", str(self.data_dir),
            "--log-level", "DEBUG",
            "--log-format", "json",
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> None:
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"driver exited with {self.proc.returncode}:\n{self.log(20000)}")
            if self._socket_answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"driver did not listen within {timeout} s:\n{self.log(20000)}")

    def _socket_answers(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.socket_path)
        except OSError:
            return False
        finally:
            s.close()
        return True

    def log(self, tail: int = 0) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
            return text[-tail:] if tail else text
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def restart(self) -> None:
        self.kill9()
        self.start()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.kill9()
        force_cleanup(self.root, self.data_dir)

    def leaks(self) -> dict[str, list[str]]:
        """What the driver left behind that no live volume explains: mounts (at the kubelet's paths and in the
        driver's own block directory) and loop devices."""
        return {
            "mounts": mounts_under(self.kubelet_dir) + mounts_under(self.block_dir),
            "loops": [dev for dev, _ in loops_backed_by(self.data_dir)],
        }

    def images(self) -> list[str]:
        return sorted(p.name for p in self.data_dir.glob("*.img"))


def serving(proc: DriverProcess) -> Iterator[DriverProcess]:
    """The body of a driver fixture: ``proc`` started, then killed and cleaned up."""
    proc.start()
    try:
        yield proc
    finally:
        proc.cleanup()


class Client:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.identity = csi.IdentityStub(channel)
        self.controller = csi.ControllerStub(channel)
        self.node = csi.NodeStub(channel)


@contextlib.asynccontextmanager
async def connect(socket_path: str) -> AsyncIterator[Client]:
    channel = Channel(path=socket_path)
    try:
        yield Client(channel)
    finally:
        channel.close()


def mount_cap(fs_type: str = "ext4", mode: csi.VolumeCapabilityAccessModeMode | None = None,
              flags: tuple[str, ...] = ()) -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapabilityMountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=csi.VolumeCapabilityAccessMode(mode=mode or csi.VolumeCapabilityAccessModeMode.SINGLE_NODE_WRITER),
    )


def block_cap(mode: csi.VolumeCapabilityAccessModeMode | None = None) -> csi.VolumeCapability:
    return csi.VolumeCapability(
        block=csi.VolumeCapabilityBlockVolume(),
        access_mode=csi.VolumeCapabilityAccessMode(mode=mode or csi.VolumeCapabilityAccessModeMode.SINGLE_NODE_WRITER),
    )


def create_request(name: str, size: int = 64 * MIB, cap: csi.VolumeCapability | None = None,
                   parameters: dict[str, str] | None = None) -> csi.CreateVolumeRequest:
    return csi.CreateVolumeRequest(
        name=name,
        capacity_range=csi.CapacityRange(required_bytes=size),
        volume_capabilities=[cap or mount_cap()],
        parameters=parameters or {},
    )


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
