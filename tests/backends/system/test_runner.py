from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import anyio
import pytest

from backends.errors import Unavailable
from backends.system.errors import CommandError, CommandTimeout
from backends.system.runner import ProcessRunner, Result, require_tools
from backends.system.testing import FakeRunner

pytestmark = pytest.mark.anyio


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(") ", 1)[1].startswith("Z")


async def _wait_for_pidfile(path: Path) -> int:
    with anyio.fail_after(5):
        while not path.exists() or not path.read_text().strip():
            await anyio.sleep(0.01)
    return int(path.read_text())


async def test_captures_stdout_stderr_and_code() -> None:
    result = await ProcessRunner().run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.duration > 0


async def test_nonzero_exit_raises_command_error_with_stderr() -> None:
    with pytest.raises(CommandError) as caught:
        await ProcessRunner().run(["sh", "-c", "echo boom >&2; exit 5"])
    assert caught.value.returncode == 5
    assert "boom" in str(caught.value)


async def test_runs_with_c_locale_and_passes_stdin() -> None:
    result = await ProcessRunner().run(["sh", "-c", 'echo "$LC_ALL"; cat'], stdin=b"hello")
    assert result.stdout == "C\nhello"


async def test_no_shell_interpretation_of_arguments() -> None:
    result = await ProcessRunner().run(["echo", "$(id)", "; rm -rf /", "*"])
    assert result.stdout == "$(id) ; rm -rf / *\n"


async def test_prefix_is_prepended() -> None:
    result = await ProcessRunner(prefix=["env", "EXTRA=1"]).run(["sh", "-c", 'echo "$EXTRA"'])
    assert result.argv[:2] == ("env", "EXTRA=1")
    assert result.stdout == "1\n"


async def test_missing_program_is_a_command_error() -> None:
    with pytest.raises(CommandError) as caught:
        await ProcessRunner().run(["localcsi-no-such-tool"])
    assert caught.value.returncode == 127


async def test_string_argv_is_refused() -> None:
    with pytest.raises(TypeError):
        await ProcessRunner().run("echo hi")


async def test_timeout_kills_the_child_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        await ProcessRunner().run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert time.monotonic() - started < 5
    grandchild = int(pidfile.read_text())
    with anyio.fail_after(5):
        while not _gone(grandchild):
            await anyio.sleep(0.02)


async def test_native_task_cancel_kills_the_child(tmp_path: Path) -> None:
    """grpclib cancels the handler task with Task.cancel() on a client deadline."""
    pidfile = tmp_path / "pid"
    task = asyncio.ensure_future(ProcessRunner().run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"]))
    pid = await _wait_for_pidfile(pidfile)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(pid)


async def test_anyio_cancel_scope_kills_the_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with anyio.move_on_after(0.3):
        await ProcessRunner().run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"])
    pid = int(pidfile.read_text())
    assert _gone(pid)


async def test_fake_runner_records_calls_and_raises_on_failure() -> None:
    def handler(argv: tuple[str, ...]) -> Result | tuple[int, str, str]:
        if argv[0] == "ok":
            return (0, "fine", "")
        return Result(argv, 2, "", "bad", 0.1)

    fake = FakeRunner(handler)
    assert (await fake.run(["ok", "x"], stdin=b"in", timeout=7)).stdout == "fine"
    assert (await fake.run(["nope"], check=False)).returncode == 2
    with pytest.raises(CommandError):
        await fake.run(["nope"])
    assert fake.calls == [("ok", "x"), ("nope",), ("nope",)]
    assert fake.inputs[0] == b"in"
    assert fake.timeouts[0] == 7


def test_require_tools_names_every_missing_tool() -> None:
    require_tools(["sh", "blkid"])
    with pytest.raises(Unavailable) as caught:
        require_tools(["sh", "localcsi-missing-a", "localcsi-missing-b"])
    assert "localcsi-missing-a" in str(caught.value)
    assert "localcsi-missing-b" in str(caught.value)
