"""What every servicer shares: configuration, backend, locks, supervisor, observer."""

from __future__ import annotations

from dataclasses import dataclass, field

from backends import errors
from backends.base import TOPOLOGY_KEY, Backend, Features
from csi.config import DriverConfig
from csi.locks import KeyLocks
from csi.rpc import Observer, Supervisor

#: Publish-context key naming the node a volume was attached to by ControllerPublishVolume.
PUBLISH_NODE_KEY = "localcsi.dev/node"


@dataclass
class ServiceContext:
    config: DriverConfig
    features: Features
    backend_: Backend | None = None
    locks: KeyLocks = field(default_factory=KeyLocks)
    supervisor: Supervisor = field(default_factory=Supervisor)
    observer: Observer | None = None

    @property
    def backend(self) -> Backend:
        if self.backend_ is None:
            raise errors.PreconditionFailed("this instance runs in controller mode and holds no storage")
        return self.backend_

    @property
    def topology(self) -> dict[str, str]:
        return {TOPOLOGY_KEY: self.config.node_id}


class Servicer:
    """Mixin giving a servicer the attributes the RPC wrapper reads."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.supervisor = ctx.supervisor
        self.observer = ctx.observer
