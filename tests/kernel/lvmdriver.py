"""A real ``localcsi serve --backend lvm`` process for the kernel lane, and what it may leave behind.

Leak checks read LVM, device-mapper and mountinfo with the plain tools (:mod:`e2e.leaks`), not
with the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from e2e import leaks
from tests.kernel.lvmtools import VolumeGroup
from tests.support import NODE_ID, DriverProcess


@dataclass
class LvmDriver(DriverProcess):
    """A driver on one volume group: its leaks are its LVs there, their dm devices, mounts under its kubelet dir."""

    vg: str = ""

    def leak_scope(self) -> leaks.Scope:
        return leaks.Scope(kubelet_dir=self.kubelet_dir, block_dir=self.block_dir, vg=self.vg)


def lvm_driver(root: Path, vg: VolumeGroup, *, thin: bool, overprovision: float = 1.0,
               node_id: str = NODE_ID, extra: tuple[str, ...] = ()) -> LvmDriver:
    """A driver on ``vg`` (with its thin pool when ``thin``), with ``extra`` flags; not started."""
    args = ["--lvm-vg", vg.name, "--kubelet-dir", str(root / "kubelet"), *extra]
    if thin:
        args += ["--lvm-thinpool", vg.thinpool, "--lvm-thin-overprovision", str(overprovision)]
    return LvmDriver(root, node_id=node_id, backend="lvm", extra_args=tuple(args), vg=vg.name)
