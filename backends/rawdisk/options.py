"""Settings of a ``rawdisk`` backend instance (``--rawdisk-*`` flags, or a rawdisk pool)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from backends.base import Features
from backends.options import OptionError, Options, option

if TYPE_CHECKING:
    from backends.base import Backend
    from backends.system.runner import Runner

MIB = 1 << 20
#: Disks smaller than this are never claimed (a volume must hold a filesystem).
DEFAULT_MIN_BYTES = 32 * MIB


@dataclass(frozen=True)
class RawdiskOptions(Options):
    kind: ClassVar[str] = "rawdisk"

    devices: tuple[str, ...] = option((), flag="--rawdisk-device", metavar="GLOB",
                                      help="allow-list pattern of whole disks the rawdisk backend may claim")
    snapshot_dir: str = option("", flag="--rawdisk-snapshot-dir", metavar="DIR", env="LOCALCSI_RAWDISK_SNAPSHOT_DIR",
                               help="where rawdisk snapshots (sparse images) are kept; without it rawdisk offers no "
                                    "snapshots")
    min_bytes: int = option(DEFAULT_MIN_BYTES, flag="--rawdisk-min-bytes",
                            help="disks smaller than this many bytes are never claimed")

    def validate(self) -> None:
        if self.min_bytes < 0:
            raise OptionError(f"min_bytes ({self.flag_of('min_bytes')}) must not be negative")

    def features(self) -> Features:
        # A whole disk cannot grow; clones copy onto another disk; snapshots need somewhere to live.
        return Features(block=True, filesystem=True, expansion=False, snapshots=bool(self.snapshot_dir), clones=True)

    def open(self, node_id: str, runner: Runner) -> Backend:
        from backends.rawdisk.backend import RawdiskBackend

        if not self.devices:
            raise OptionError(f"the rawdisk backend needs at least one allow-list pattern: devices "
                              f"({self.flag_of('devices')})")
        return RawdiskBackend(node_id, self, runner)

    def describe(self) -> str:
        return "whole disks matching " + ", ".join(self.devices) + (
            f", snapshots in {self.snapshot_dir}" if self.snapshot_dir else "")
