"""Failures of the operating system layer.

Both classes derive from :class:`backends.errors.SystemFailure`, so anything a
caller does not classify further still maps to INTERNAL with a useful message.

    SystemFailure
    ├── CommandError      a process exited non-zero (argv, returncode, stderr)
    │   └── CommandTimeout    it ran past its timeout and was killed
    └── SyscallError      a syscall or ioctl failed (call, errno, path)
"""

from __future__ import annotations

import errno as errno_codes
import os
from collections.abc import Sequence

from backends.errors import SystemFailure

#: How many trailing stderr lines a CommandError message carries.
STDERR_TAIL_LINES = 5


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


class CommandError(SystemFailure):
    """A command exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, *, stdout: str = "") -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        program = self.argv[0] if self.argv else "<empty argv>"
        message = f"{program} exited with code {returncode}"
        tail = _tail(stderr)
        if tail:
            message += f": {tail}"
        super().__init__(message)


class CommandTimeout(CommandError):
    """A command ran past its timeout and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float, stderr: str = "", *, stdout: str = "") -> None:
        super().__init__(argv, -9, stderr, stdout=stdout)
        self.timeout = timeout
        program = self.argv[0] if self.argv else "<empty argv>"
        self.message = f"{program} timed out after {timeout:g}s and was killed"
        tail = _tail(stderr)
        if tail:
            self.message += f": {tail}"
        self.args = (self.message,)


class SyscallError(SystemFailure):
    """A syscall or ioctl failed; ``errno`` is the raw error number."""

    def __init__(self, call: str, errno: int, path: str, detail: str = "") -> None:
        self.call = call
        self.errno = errno
        self.path = path
        name = errno_codes.errorcode.get(errno, str(errno))
        message = f"{call}({path}) failed: {name} ({os.strerror(errno)})"
        if detail:
            message += f"; {detail}"
        super().__init__(message)

    @classmethod
    def from_oserror(cls, call: str, path: str, exc: OSError, detail: str = "") -> SyscallError:
        return cls(call, exc.errno or 0, path, detail)
