"""Named fault points for crash-consistency testing; a no-op unless armed.

The CLI arms them once at start-up from ``$LOCALCSI_FAULT``, a comma-separated
list of ``<point>:kill``, ``<point>:fail`` or ``<point>:stop`` entries, e.g.
``create.after_meta:kill``: the first time the driver reaches that point it
SIGKILLs itself, exactly as if the container had been killed there (``kill``),
or that one call fails there with an I/O error, as if the system had failed it
(``fail``: tests the call's own rollback), or the whole process stops there
(SIGSTOP) until someone sends it SIGCONT (``stop``: holds an operation in the
middle, its locks and a frozen filesystem with it, while a test looks at the
world). Points used by the drivers' mutations:

    create.after_meta   create.after_image   create.after_ready
    delete.after_mark   expand.after_grow
    stage.after_attach  stage.after_mkfs     stage.after_mount
    snapshot.after_freeze          (loopfile: source filesystem frozen, image not yet copied)
    snapshot.delete.after_mark     (loopfile, rawdisk: image renamed to its deletion mark, record still there)
    rawdisk.create.after_copy      (clone/restore copied, claim still "copying")
    rawdisk.snapshot.after_freeze  (source filesystem frozen, image not yet copied)
"""

from __future__ import annotations

import os
import signal

from backends.errors import SystemFailure

ENV_VAR = "LOCALCSI_FAULT"
ACTIONS = ("kill", "fail", "stop")
_armed: set[str] = set()
_failing: set[str] = set()
_stopping: set[str] = set()


def arm(spec: str) -> frozenset[str]:
    """Arm the points named in ``spec`` (``point:kill|fail|stop[,...]``); returns what was armed."""
    chosen: dict[str, set[str]] = {action: set() for action in ACTIONS}
    for entry in spec.split(","):
        point, sep, action = entry.strip().partition(":")
        if point and sep and action in ACTIONS:
            chosen[action].add(point)
        elif entry.strip():
            raise ValueError(f"bad {ENV_VAR} entry {entry!r}: expected <point>:kill, <point>:fail or <point>:stop")
    for armed, action in ((_armed, "kill"), (_failing, "fail"), (_stopping, "stop")):
        armed.clear()
        armed.update(chosen[action])
    return frozenset().union(*chosen.values())


def fault_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup), fail this call once, or stop the process here once (SIGSTOP), as
    ``name`` is armed; otherwise do nothing."""
    if name in _armed:
        os.kill(os.getpid(), signal.SIGKILL)
    if name in _stopping:
        _stopping.discard(name)
        os.kill(os.getpid(), signal.SIGSTOP)
    if name in _failing:
        _failing.discard(name)
        raise SystemFailure(f"fault injected at {name}")
