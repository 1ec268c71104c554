"""A :class:`~backends.system.runner.Runner` for unit tests, beside the real one and never used by the driver.

Unit tests replace the command runner (the one seam where fakes are allowed) with a :class:`FakeRunner`
whose handler decides every command's outcome, the way httpx's ``MockTransport`` replaces the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from backends.system.errors import CommandError
from backends.system.runner import Result, check_argv

Handler = Callable[[tuple[str, ...]], "Result | tuple[int, str, str]"]


@dataclass
class FakeRunner:
    """A Runner for unit tests: a handler decides every command's outcome.

    The handler gets the argv tuple and returns a :class:`Result` or a
    ``(returncode, stdout, stderr)`` tuple; it may also raise. Calls are
    recorded in :attr:`calls` (argv) and :attr:`inputs` (stdin).
    """

    handler: Handler
    calls: list[tuple[str, ...]] = field(default_factory=list)
    inputs: list[bytes | None] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)

    async def run(self, argv: Sequence[str], *, timeout: float = 60.0, check: bool = True,  # noqa: ASYNC109
                  stdin: bytes | None = None) -> Result:
        args = check_argv(argv)
        self.calls.append(args)
        self.inputs.append(stdin)
        self.timeouts.append(timeout)
        outcome = self.handler(args)
        if isinstance(outcome, Result):
            result = outcome
        else:
            code, stdout, stderr = outcome
            result = Result(args, code, stdout, stderr, 0.0)
        if check and result.returncode != 0:
            raise CommandError(args, result.returncode, result.stderr, stdout=result.stdout)
        return result
