"""Settings of a ``loopfile`` backend instance (``--loopfile-*`` flags, or a loopfile pool)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from backends.base import Features
from backends.options import OptionError, Options, option

if TYPE_CHECKING:
    from backends.base import Backend
    from backends.system.runner import Runner


@dataclass(frozen=True)
class LoopfileOptions(Options):
    kind: ClassVar[str] = "loopfile"

    directory: str = option("/var/lib/localcsi/volumes", flag="--loopfile-dir", metavar="DIR",
                            help="where loopfile images live")
    overcommit: float = option(1.0, flag="--loopfile-overcommit",
                               help="how far thin images may promise beyond free space (1.0: never)")
    buffered_io: bool = option(False, flag="--loopfile-buffered-io", help="attach loop devices without direct I/O")

    def validate(self) -> None:
        if not self.directory:
            raise OptionError(f"directory ({self.flag_of('directory')}) must not be empty")
        if self.overcommit < 1.0:
            raise OptionError(f"overcommit ({self.flag_of('overcommit')}) must be at least 1.0, not {self.overcommit}")

    def features(self) -> Features:
        return Features(block=True, filesystem=True, expansion=True, snapshots=True, clones=True)

    def open(self, node_id: str, runner: Runner) -> Backend:
        from backends.loopfile.backend import LoopfileBackend

        return LoopfileBackend(node_id, self, runner)

    def describe(self) -> str:
        return f"loopfile images in {self.directory}"
