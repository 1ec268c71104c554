"""A simulated node: its directories, its storage budget and its driver process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from e2e.sim.driver import DriverInstance


@dataclass(frozen=True)
class Registration:
    """What node-driver-registrar learnt (GetPluginInfo + NodeGetInfo) and kubelet put into CSINode."""

    driver_name: str
    node_id: str
    topology: dict[str, str]
    max_volumes: int


@dataclass
class SimNode:
    name: str
    root: Path
    capacity_bytes: int
    driver: DriverInstance
    registration: Registration | None = None
    #: The scenario creates many volumes at once (profiles with one volume per disk make more disks).
    many_volumes: bool = False
    #: Harness-owned resources the backend profile made (loop devices standing in for disks, a VG name, …).
    resources: dict[str, list[str]] = field(default_factory=dict)

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def storage_dir(self) -> Path:
        """The node's storage budget: a size-limited tmpfs holding images or disk files."""
        return self.root / "storage"
