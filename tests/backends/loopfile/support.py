"""What the loopfile backend's own tests share."""

from __future__ import annotations

from pathlib import Path

from backends.loopfile.backend import LoopfileBackend
from backends.loopfile.options import LoopfileOptions
from backends.system.runner import ProcessRunner


async def started(directory: Path, node_id: str = "node-1") -> LoopfileBackend:
    """A loopfile backend on ``directory`` with real commands, started (call ``close`` when done)."""
    backend = LoopfileBackend(node_id, LoopfileOptions(directory=str(directory)), ProcessRunner())
    await backend.start()
    return backend
