from __future__ import annotations

import errno

from backends.errors import SystemFailure
from backends.system.errors import CommandError, CommandTimeout, SyscallError


def test_command_error_names_program_code_and_last_stderr_lines() -> None:
    stderr = "\n".join(f"line {i}" for i in range(10)) + "\n\n"
    exc = CommandError(["mkfs.xfs", "-q", "/dev/loop3"], 1, stderr)
    assert isinstance(exc, SystemFailure)
    assert exc.argv == ("mkfs.xfs", "-q", "/dev/loop3")
    assert exc.returncode == 1
    assert exc.stderr == stderr
    text = str(exc)
    assert text.startswith("mkfs.xfs exited with code 1: ")
    assert "line 9" in text and "line 5" in text
    assert "line 4" not in text


def test_command_timeout_is_a_command_error() -> None:
    exc = CommandTimeout(["sleep", "10"], 0.5)
    assert isinstance(exc, CommandError)
    assert "sleep timed out after 0.5s" in str(exc)


def test_syscall_error_names_call_errno_and_path() -> None:
    exc = SyscallError("umount2", errno.EBUSY, "/mnt/x", "still open")
    assert isinstance(exc, SystemFailure)
    assert (exc.call, exc.errno, exc.path) == ("umount2", errno.EBUSY, "/mnt/x")
    assert str(exc) == "umount2(/mnt/x) failed: EBUSY (Device or resource busy); still open"
