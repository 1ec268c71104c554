"""What this process may do: its effective capabilities (``/proc/self/status``).

Read once at start-up, to warn about what a missing capability disables (the driver still runs).
"""

from __future__ import annotations

from pathlib import Path

PROC_STATUS = Path("/proc/self/status")
#: <linux/capability.h>
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24


def effective_capabilities(status: str) -> int:
    """The ``CapEff`` bit mask from ``/proc/<pid>/status`` text (0 when absent)."""
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return int(value.strip(), 16)
    return 0


def has_capability(capability: int) -> bool:
    """Whether this process holds ``capability`` now. Blocking (a small /proc read)."""
    try:
        status = PROC_STATUS.read_text()
    except OSError:
        return False
    return bool(effective_capabilities(status) >> capability & 1)
