"""The driver's configuration: built once by the CLI, frozen, passed down."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Mode(enum.Enum):
    """Which CSI services this process serves.

    ``all``: Identity + Controller + Node, the node-deployment default (volumes are node-local).
    ``controller``: Identity + Controller without any node state; used by the cluster-wide
    attacher/resizer. ControllerPublish names the node in the publish context and NodeStage
    checks it; ControllerExpand asks for node expansion, which grows the storage on the node.
    ``node``: Identity + Node only.
    """

    ALL = "all"
    CONTROLLER = "controller"
    NODE = "node"

    @property
    def serves_controller(self) -> bool:
        return self is not Mode.NODE

    @property
    def serves_node(self) -> bool:
        return self is not Mode.CONTROLLER

    @property
    def has_storage(self) -> bool:
        return self is not Mode.CONTROLLER


@dataclass(frozen=True)
class DriverConfig:
    driver_name: str
    node_id: str
    endpoint: str
    mode: Mode = Mode.ALL
    backend: str = "loopfile"
    backend_options: dict[str, object] = field(default_factory=dict)
    max_volumes_per_node: int = 0
    #: How long SIGTERM waits for in-flight RPCs before exiting.
    shutdown_grace_seconds: float = 20.0
    metrics_address: str = ""
    version: str = "0.1.0"
