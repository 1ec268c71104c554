"""Settings of an ``lvm`` backend instance (``--lvm-*`` flags, or an lvm pool)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from backends.base import Features
from backends.options import OptionError, Options, option

if TYPE_CHECKING:
    from backends.base import Backend
    from backends.system.runner import Runner


@dataclass(frozen=True)
class LvmOptions(Options):
    kind: ClassVar[str] = "lvm"

    vg: str = option("", flag="--lvm-vg", metavar="VG", help="volume group for the lvm backend")
    thinpool: str = option("", flag="--lvm-thinpool", metavar="POOL",
                           help="thin pool LV inside the volume group (enables thin volumes, snapshots and clones)")
    thin_overprovision: float = option(1.0, flag="--lvm-thin-overprovision",
                                       help="how far thin volumes may promise beyond the thin pool's size")

    def validate(self) -> None:
        if self.thin_overprovision < 1.0:
            raise OptionError(f"thin_overprovision ({self.flag_of('thin_overprovision')}) must be at least 1.0, "
                              f"not {self.thin_overprovision}")

    def features(self) -> Features:
        thin = bool(self.thinpool)
        return Features(block=True, filesystem=True, expansion=True, snapshots=thin, clones=thin)

    def open(self, node_id: str, runner: Runner) -> Backend:
        from backends.lvm.backend import LvmBackend

        if not self.vg:
            raise OptionError(f"the lvm backend needs a volume group: vg ({self.flag_of('vg')})")
        return LvmBackend(node_id, self, runner)

    def describe(self) -> str:
        return f"volume group {self.vg}" + (f", thin pool {self.thinpool}" if self.thinpool else "")
