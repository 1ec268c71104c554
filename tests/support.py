"""Test support: a real driver process, a gRPC client for it, and leak checks.

Cleanup and leak checks use :mod:`e2e.leaks` and the plain system tools (``umount``,
``losetup``) rather than the code under test, so a bug in the driver cannot hide its
own leaks.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from grpclib.client import Channel

from csi.gen.csi import v1 as csi
from e2e import leaks

NODE_ID = "test-node-1"
GIB = 1 << 30
MIB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
#: The command line, as a user runs it from a checkout.
LOCALCSI = (sys.executable, "-m", "csi.cli")


def localcsi(*args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``localcsi ARGS`` from the repository; output captured as text."""
    return subprocess.run([*LOCALCSI, *args], capture_output=True, text=True, timeout=timeout, check=check, cwd=REPO)


@contextlib.contextmanager
def sparse_file(prefix: str, size: int) -> Iterator[Path]:
    """A sparse file of ``size`` bytes alone in a new scratch directory; both are removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    image = scratch / "image.img"
    with image.open("wb") as handle:
        handle.truncate(size)
    try:
        yield image
    finally:
        image.unlink(missing_ok=True)
        scratch.rmdir()


def force_cleanup(root: Path, data_dir: Path) -> None:
    """Unmount everything under ``root`` (deepest first) and detach the loop devices over ``data_dir``'s files."""
    attached = leaks.loops_backed_under(data_dir)  # before the unmounts: a lazy unmount renames the backing files
    for point in sorted(leaks.mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    for info in attached:
        subprocess.run(["losetup", "-d", info.device], check=False, capture_output=True)


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
            *LOCALCSI, "serve",
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
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
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

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds ``text`` (the driver writes it off its event loop, so it may trail an answer);
        the log as it is when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return log

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    @contextlib.contextmanager
    def running(self, timeout: float = 30.0) -> Iterator[DriverProcess]:
        """Started; afterwards killed, with every mount and loop device it left forced away."""
        self.start(timeout)
        try:
            yield self
        finally:
            self.cleanup()

    def restart(self) -> None:
        self.kill9()
        self.start()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.kill9()
        force_cleanup(self.root, self.data_dir)

    def leak_scope(self) -> leaks.Scope:
        """Where this driver may leave something behind: mounts under its kubelet dir and its block directory, loop
        devices over its images."""
        return leaks.Scope(kubelet_dir=self.kubelet_dir, block_dir=self.block_dir, data_dir=self.data_dir)

    def leaks(self) -> dict[str, list[str]]:
        """What the driver left behind in its scope, one list per kind (see :mod:`e2e.leaks`)."""
        return leaks.find(self.leak_scope())

    def images(self) -> list[str]:
        return sorted(p.name for p in self.data_dir.glob("*.img"))


def assert_no_leaks(driver: DriverProcess, when: str = "") -> None:
    found = driver.leaks()
    assert not any(found.values()), f"left behind{' ' + when if when else ''}: {found}"


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
