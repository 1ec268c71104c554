"""Named fault points for crash-consistency testing; a no-op unless armed.

The CLI arms them once at start-up from ``$LOCALCSI_FAULT``, a comma-separated
list of ``<point>:kill`` entries, e.g. ``create.after_meta:kill``: the first
time the driver reaches that point it SIGKILLs itself, exactly as if the
container had been killed there. Points used by the drivers' mutations:

    create.after_meta   create.after_image   create.after_ready
    delete.after_mark   expand.after_grow
    stage.after_attach  stage.after_mkfs     stage.after_mount
    rawdisk.create.after_copy      (clone/restore copied, claim still "copying")
    rawdisk.snapshot.after_freeze  (source filesystem frozen, image not yet copied)
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "LOCALCSI_FAULT"
_armed: set[str] = set()


def arm(spec: str) -> frozenset[str]:
    """Arm the points named in ``spec`` (``point:kill[,point:kill...]``); returns what was armed."""
    points = set()
    for entry in spec.split(","):
        point, sep, action = entry.strip().partition(":")
        if point and sep and action == "kill":
            points.add(point)
        elif entry.strip():
            raise ValueError(f"bad {ENV_VAR} entry {entry!r}: expected <point>:kill")
    _armed.clear()
    _armed.update(points)
    return frozenset(points)


def fault_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when ``name`` is armed; otherwise do nothing."""
    if name in _armed:
        os.kill(os.getpid(), signal.SIGKILL)
