"""One ``localcsi serve`` process per simulated node, and the retrying gRPC caller the roles share.

The driver runs in its own session (process group), like a container: a
``kill -9`` of the node's driver kills the group, so a child ``mkfs`` dies with
it, as it would when a container is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import anyio
from anyio.abc import Process
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from csi.gen.csi import v1 as csi
from e2e.sim.deadlines import Deadlines
from e2e.sim.stats import Stats

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
RETRYABLE = frozenset({"ABORTED", "DEADLINE_EXCEEDED", "UNAVAILABLE"})
#: A per-call deadline for callers that want one (e2e/reliability uses it); the harness's roles set none.
CALL_TIMEOUT = 30.0


class CallFailed(Exception):
    """An RPC ended with a non-retryable status (or retries ran out)."""

    def __init__(self, rpc: str, code: str, message: str) -> None:
        super().__init__(f"{rpc} failed with {code}: {message}")
        self.rpc, self.code, self.message = rpc, code, message


class Stubs:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.identity = csi.IdentityStub(channel)
        self.controller = csi.ControllerStub(channel)
        self.node = csi.NodeStub(channel)


def classify(exc: BaseException) -> tuple[str, str]:
    """The gRPC status name a sidecar would see for this failure, and a message."""
    if isinstance(exc, GRPCError):
        return exc.status.name, exc.message or ""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "DEADLINE_EXCEEDED", "client deadline expired"
    if isinstance(exc, StreamTerminatedError | ConnectionError | OSError | EOFError):
        return "UNAVAILABLE", f"{type(exc).__name__}: {exc}"
    return "UNKNOWN", f"{type(exc).__name__}: {exc}"


@dataclass
class DriverInstance:
    """A driver process with its socket, log and restart/kill controls."""

    root: Path
    argv_tail: list[str]
    stats: Stats
    #: How long :meth:`start` waits for the socket to answer (the profile's deadlines stretch it under TCG).
    start_seconds: float = Deadlines().start_seconds
    process: Process | None = None
    stubs: Stubs | None = None
    _log: IO[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.root / "csi.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "driver.log"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "csi.cli", "serve", "--endpoint", f"unix://{self.socket_path}",
                "--log-format", "json", "--log-level", "DEBUG", *self.argv_tail]

    async def start(self) -> None:
        self._close_log()
        self._log = self.log_path.open("ab")
        self.process = await anyio.open_process(self.argv(), stdin=None, stdout=self._log, stderr=self._log,
                                                cwd=REPO, start_new_session=True)
        with anyio.fail_after(self.start_seconds):
            while not await anyio.to_thread.run_sync(self._answers):
                if self.process.returncode is not None:
                    raise RuntimeError(f"driver exited with {self.process.returncode}:\n{self.log_tail()}")
                await anyio.sleep(0.05)
        self.stubs = Stubs(Channel(path=str(self.socket_path)))

    def _answers(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket_path))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _close_channel(self) -> None:
        if self.stubs is not None:
            self.stubs.channel.close()
            self.stubs = None

    async def kill9(self) -> None:
        """SIGKILL the driver's whole process group (a container crash) and reap it."""
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with anyio.fail_after(10):
                await proc.wait()
        self._close_channel()

    async def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                with anyio.fail_after(30):
                    await proc.wait()
            except TimeoutError:
                await self.kill9()
        self._close_channel()
        self._close_log()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def client(self) -> Stubs:
        if self.stubs is None:
            raise CallFailed("connect", "UNAVAILABLE", f"driver at {self.socket_path} is not running")
        return self.stubs


class Caller:
    """Issues RPCs the way the sidecars and kubelet do: backoff on transient codes (no per-attempt deadline)."""

    def __init__(self, stats: Stats, *, initial_backoff: float = 0.05, max_backoff: float = 1.0,
                 give_up_after: float = 60.0) -> None:
        self.stats = stats
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.give_up_after = give_up_after

    async def once(self, driver: DriverInstance, rpc: str, send: Callable[[Stubs], Awaitable[T]]) -> T:
        """One attempt; failures surface as :class:`CallFailed` with the status a sidecar would see."""
        self.stats.operation(rpc)
        try:
            return await send(driver.client())
        except CallFailed as exc:
            self.stats.error(rpc, exc.code)
            raise
        except Exception as exc:
            code, message = classify(exc)
            self.stats.error(rpc, code)
            raise CallFailed(rpc, code, message) from exc

    async def call(self, driver: DriverInstance, rpc: str, send: Callable[[Stubs], Awaitable[T]],
                   *, retry_on: frozenset[str] = RETRYABLE) -> T:
        """Retry with exponential backoff while the status is in ``retry_on``; re-raise anything else."""
        delay = self.initial_backoff
        deadline = anyio.current_time() + self.give_up_after
        while True:
            try:
                return await self.once(driver, rpc, send)
            except CallFailed as exc:
                if exc.code not in retry_on or anyio.current_time() + delay > deadline:
                    raise
            self.stats.retries += 1
            await anyio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
