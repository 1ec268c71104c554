"""Space held for operations in flight, so that two admissions can never promise the same bytes.

A backend whose volumes (or snapshots) share one filesystem admits each operation that will take space with
:meth:`Reservations.hold`: under one lock it measures what is still available (free space less what the
backend has already promised to its volumes), subtracts what operations admitted earlier still hold, and
either refuses (:class:`~backends.errors.CapacityExhausted`) or holds the new operation's cost until the body
ends. The body makes the operation's space real (allocates it, or records the promise in the backend's own
state), so when the hold is released the next measurement sees it. Releasing takes the same lock: a
measurement never sees an operation neither as held nor as done.

The lock is held only for the measurement (a ``statvfs`` and the sizes of the backend's files), never for
the operation itself: creations, copies and expansions still run side by side.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from backends.errors import CapacityExhausted

#: What the backend can still give out, measured now: bytes free less bytes already promised.
Measure = Callable[[], Awaitable[int]]


class Reservations:
    """The bytes held by admitted operations that have not finished yet."""

    def __init__(self, measure: Measure) -> None:
        self._measure = measure
        self._lock = anyio.Lock()
        self._held: dict[int, int] = {}
        self._tokens = itertools.count()

    @property
    def held_bytes(self) -> int:
        return sum(self._held.values())

    async def available(self) -> int:
        """What a new operation could be given now."""
        async with self._lock:
            return max(0, await self._measure() - self.held_bytes)

    @contextlib.asynccontextmanager
    async def hold(self, cost_bytes: int, what: str) -> AsyncIterator[None]:
        """Admit an operation that costs ``cost_bytes`` (``what`` names it in the refusal), or refuse it."""
        async with self._lock:
            available = max(0, await self._measure() - self.held_bytes)
            if cost_bytes > available:
                raise CapacityExhausted(f"not enough space: {what} needs {cost_bytes} bytes, {available} bytes "
                                        "available on this node")
            token = next(self._tokens)
            self._held[token] = cost_bytes
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._lock:
                    del self._held[token]
