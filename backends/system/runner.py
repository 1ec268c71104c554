"""The one place that runs external commands.

argv lists only (never a shell), ``LC_ALL=C``, stdout and stderr captured, a
timeout on every call. A child is killed (its whole process group) when the
call times out *and* when the calling task is cancelled, including asyncio's
native ``Task.cancel()`` that grpclib uses for client deadlines: anyio's own
``run_process`` would keep waiting for the child in that case.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import ByteReceiveStream, Process
from loguru import logger

from backends.errors import Unavailable
from backends.system.errors import CommandError, CommandTimeout

#: Upper bound on how long we wait for a killed child to be reaped.
_REAP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float


class Runner(Protocol):
    """Runs a command; ``timeout`` kills the child on expiry (it is not just abandoned)."""

    async def run(self, argv: Sequence[str], *, timeout: float = 60.0, check: bool = True,  # noqa: ASYNC109
                  stdin: bytes | None = None) -> Result: ...


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not a string")
    args = tuple(argv)
    if not args:
        raise ValueError("argv is empty")
    for arg in args:
        if "\0" in arg:
            raise ValueError(f"argument {arg!r} contains a NUL byte")
    return args


def _kill_group(process: Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - not our group after all
        process.kill()


async def _drain(stream: ByteReceiveStream | None, sink: bytearray) -> None:
    if stream is None:
        return
    async for chunk in stream:
        sink.extend(chunk)


class ProcessRunner:
    """Runs commands as child processes, optionally behind a fixed prefix.

    ``prefix`` is prepended to every argv, e.g. ``("nsenter", "-t", "1", "-m", "--")``
    to act in the host's mount namespace from a container.
    """

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        self.prefix = tuple(prefix)

    async def run(self, argv: Sequence[str], *, timeout: float = 60.0, check: bool = True,  # noqa: ASYNC109
                  stdin: bytes | None = None) -> Result:
        args = check_argv(argv)
        full = self.prefix + args
        env = dict(os.environ, LC_ALL="C")
        started = time.monotonic()
        out = bytearray()
        err = bytearray()
        timed_out = False
        try:
            process = await anyio.open_process(
                full,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise CommandError(full, 127, f"{full[0]}: command not found") from exc
        except PermissionError as exc:
            raise CommandError(full, 126, f"{full[0]}: {exc.strerror}") from exc
        try:
            with anyio.move_on_after(timeout) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drain, process.stdout, out)
                    tg.start_soon(_drain, process.stderr, err)
                    if process.stdin is not None:
                        if stdin:
                            await process.stdin.send(stdin)
                        await process.stdin.aclose()
                    await process.wait()
            timed_out = scope.cancelled_caught
        finally:
            # Reached on success, timeout, cancellation (anyio or native) and errors.
            if process.returncode is None:
                _kill_group(process)
            with anyio.CancelScope(shield=True), anyio.move_on_after(_REAP_TIMEOUT):
                await process.wait()
            with anyio.CancelScope(shield=True):
                await process.aclose()
        duration = time.monotonic() - started
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        returncode = process.returncode if process.returncode is not None else -9
        logger.debug(
            "command {argv} -> {code} in {ms:.1f} ms",
            argv=list(full),
            code="timeout" if timed_out else returncode,
            ms=duration * 1000,
        )
        if timed_out:
            raise CommandTimeout(full, timeout, stderr, stdout=stdout)
        result = Result(full, returncode, stdout, stderr, duration)
        if check and returncode != 0:
            raise CommandError(full, returncode, stderr, stdout=stdout)
        return result


def missing_tools(names: Iterable[str]) -> list[str]:
    """The tools among ``names`` that are not on ``PATH``."""
    return [name for name in names if shutil.which(name) is None]


def require_tools(names: Iterable[str]) -> None:
    """Fail fast at start-up, naming every missing tool at once."""
    missing = missing_tools(names)
    if missing:
        raise Unavailable(f"required tools not found on PATH: {', '.join(missing)}")
