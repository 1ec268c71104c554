"""Per-key locks: one operation per volume (or name) at a time, never a global lock.

A busy key answers ABORTED at once instead of queueing, as the CSI spec asks
("an operation is already in progress for this volume"); the CO retries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from backends.errors import Busy


class KeyLocks:
    def __init__(self) -> None:
        self._held: set[str] = set()

    @contextmanager
    def hold(self, *keys: str) -> Iterator[None]:
        """Hold every key, or raise ``Busy`` naming the first one in use. Not reentrant."""
        wanted = _unique(keys)
        for key in wanted:
            if key in self._held:
                raise Busy(f"an operation on {key} is already in progress")
        self._held.update(wanted)
        try:
            yield
        finally:
            self._held.difference_update(wanted)

    def busy(self, key: str) -> bool:
        return key in self._held


def _unique(keys: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(k for k in keys if k))
