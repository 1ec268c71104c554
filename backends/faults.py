"""Named fault points for crash-consistency testing; a no-op unless armed.

The CLI arms them once at start-up from ``$LOCALCSI_FAULT``, a comma-separated
list of ``<point>:kill`` or ``<point>:fail`` entries, e.g. ``create.after_meta:kill``:
the first time the driver reaches that point it SIGKILLs itself, exactly as if
the container had been killed there (``kill``), or that one call fails there
with an I/O error, as if the system had failed it (``fail``: tests the
call's own rollback). Points used by the drivers' mutations:

    create.after_meta   create.after_image   create.after_ready
    delete.after_mark   expand.after_grow
    stage.after_attach  stage.after_mkfs     stage.after_mount
    rawdisk.create.after_copy      (clone/restore copied, claim still "copying")
    rawdisk.snapshot.after_freeze  (source filesystem frozen, image not yet copied)
"""

from __future__ import annotations

import os
import signal

from backends.errors import SystemFailure

ENV_VAR = "LOCALCSI_FAULT"
ACTIONS = ("kill", "fail")
_armed: set[str] = set()
_failing: set[str] = set()


def arm(spec: str) -> frozenset[str]:
    """Arm the points named in ``spec`` (``point:kill|fail[,...]``); returns what was armed."""
    kills: set[str] = set()
    fails: set[str] = set()
    for entry in spec.split(","):
        point, sep, action = entry.strip().partition(":")
        if point and sep and action in ACTIONS:
            (kills if action == "kill" else fails).add(point)
        elif entry.strip():
            raise ValueError(f"bad {ENV_VAR} entry {entry!r}: expected <point>:kill or <point>:fail")
    _armed.clear()
    _armed.update(kills)
    _failing.clear()
    _failing.update(fails)
    return frozenset(kills | fails)


def fault_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) or fail this call once, as ``name`` is armed; otherwise do nothing."""
    if name in _armed:
        os.kill(os.getpid(), signal.SIGKILL)
    if name in _failing:
        _failing.discard(name)
        raise SystemFailure(f"fault injected at {name}")
