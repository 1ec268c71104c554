"""The driver's configuration: built once by the CLI, frozen, passed down.

Nothing here reads the environment or parses flags: :mod:`csi.cli` does, and
hands the result over as a :class:`DriverConfig`. The endpoint type lives here
(not with the server) so that clients (``ctl``, ``bench``) can parse an
endpoint without importing the driver.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from urllib.parse import urlparse

from backends.options import Options
from backends.pools import PoolSpec, default_pool


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
class Endpoint:
    """Where a CSI server listens (or a client dials): a unix socket path, or a TCP host and port."""

    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, value: str) -> Endpoint:
        """``unix:///abs/path`` or ``tcp://host:port``; a bare absolute path is taken as a unix socket."""
        if value.startswith("/"):
            return cls(path=value)
        url = urlparse(value)
        if url.scheme == "unix":
            path = (url.netloc + url.path) if url.netloc else url.path
            if not path.startswith("/"):
                raise ValueError(f"unix endpoint needs an absolute path: {value!r}")
            return cls(path=path)
        try:
            port = url.port if url.scheme == "tcp" else None
        except ValueError:
            port = None
        if url.scheme == "tcp" and url.hostname and port:
            return cls(host=url.hostname, port=port)
        raise ValueError(f"endpoint must be unix:///path or tcp://host:port, not {value!r}")

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.path else f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True)
class DriverConfig:
    driver_name: str
    node_id: str
    endpoint: str
    #: The storage this driver serves: one pool from flags, or the pools of a pools file.
    pools: tuple[PoolSpec, ...]
    #: Whether ids carry their pool (a pools file); a driver configured by flags hands out plain ids.
    pooled_ids: bool = False
    mode: Mode = Mode.ALL
    #: Prefix of every system command (e.g. ``nsenter -t 1 -m --``), for a driver running in a container.
    command_prefix: tuple[str, ...] = ()
    #: When set, staging and target paths must lie strictly below one of these (the kubelet directory).
    kubelet_dirs: tuple[str, ...] = ()
    #: Where staged block volumes keep their device binds ("": :attr:`node_block_dir` chooses).
    block_dir: str = ""
    max_volumes_per_node: int = 0
    #: How long SIGTERM waits for in-flight RPCs before exiting.
    shutdown_grace_seconds: float = 20.0
    metrics_address: str = ""
    version: str = "0.1.0"

    @property
    def backend(self) -> Options:
        """The default pool's settings."""
        return default_pool(self.pools).options

    @property
    def backend_name(self) -> str:
        """The backend of a one-pool driver; ``pools`` when there are several."""
        return self.pools[0].options.kind if len(self.pools) == 1 else "pools"

    @property
    def pool_summary(self) -> str:
        """``name=backend`` for each pool, the default first."""
        first = default_pool(self.pools).name
        ordered = sorted(self.pools, key=lambda p: (p.name != first, p.name))
        return ",".join(f"{p.name}={p.options.kind}" for p in ordered)

    @property
    def node_block_dir(self) -> str:
        """The driver's own directory for staged block volumes (backends/nodeops.py): ``block_dir``, else below
        the first kubelet directory (on the host, with the kubelet's mount propagation), else beside the socket."""
        if self.block_dir:
            return self.block_dir
        if self.kubelet_dirs:
            return os.path.join(self.kubelet_dirs[0], "plugins", self.driver_name, "block")
        socket = Endpoint.parse(self.endpoint).path
        return os.path.join(os.path.dirname(socket), "block") if socket else "/run/localcsi/block"
