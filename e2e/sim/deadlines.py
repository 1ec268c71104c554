"""How long the harness waits: for a driver to answer after its start, and for a scenario.

A value handed down (the profile carries one; the runner and the cluster ask it), never a module constant
rewritten at run time. Under qemu TCG (the kernel lane, ``LOCALCSI_VMTEST=1``) a Python driver starts and
answers about ten times slower than on the host, so every deadline there stretches by :data:`TCG_FACTOR`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: The stretch of every deadline under qemu TCG.
TCG_FACTOR = 4.0


@dataclass(frozen=True)
class Deadlines:
    #: From a driver's start until its socket answers.
    start_seconds: float = 30.0
    #: One scenario's body, and separately its cleanup.
    scenario_seconds: float = 150.0
    #: Scenarios that make many volumes get this many times the budget: under TCG every LVM command of a burst
    #: of 100 concurrent claims costs a second or more of emulated CPU, and the creates serialise on the pool.
    many_volumes_factor: float = 2.0
    #: What :meth:`for_environment` stretched the defaults by (1.0 on the host), for the summary.
    factor: float = 1.0

    def scenario(self, *, many_volumes: bool = False) -> float:
        """The deadline of one scenario's body (and, separately, of its cleanup)."""
        return self.scenario_seconds * (self.many_volumes_factor if many_volumes else 1.0)

    def stretched(self, factor: float) -> Deadlines:
        return Deadlines(self.start_seconds * factor, self.scenario_seconds * factor, self.many_volumes_factor,
                         self.factor * factor)

    @classmethod
    def for_environment(cls, environ: Mapping[str, str] = os.environ) -> Deadlines:
        """The defaults, stretched by :data:`TCG_FACTOR` inside the kernel lane."""
        return cls().stretched(TCG_FACTOR) if environ.get("LOCALCSI_VMTEST") == "1" else cls()
