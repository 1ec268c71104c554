"""Builds the services for the configured mode, listens, drains on SIGTERM.

Start-up order: a live socket at our path ends start-up before the backend
does anything (a stale one is removed); then the backend locks its storage
(another instance holding it ends start-up too, with nothing touched), rebuilds
its state and repairs what a crash left; only then does the socket listen.

Shutdown order: stop accepting connections, wait (bounded) for in-flight RPCs
and the mutations they started, then close the remaining connections and exit
0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
from typing import Any

import anyio
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from loguru import logger

from backends import errors
from backends.base import Backend
from backends.nodeops import NodeOps
from backends.pools import merged_features
from backends.system.runner import Runner
from csi import memory, wire
from csi.config import DriverConfig, Endpoint
from csi.context import ServiceContext
from csi.controller import ControllerService
from csi.gen.csi import v1 as csi
from csi.identity import IdentityService
from csi.metrics import DriverMetrics
from csi.node import NodeService
from csi.rpc import Observer

SOCKET_MODE = 0o660


class RequestCodec(ProtoCodec):
    """grpclib's protobuf codec, but a request that does not parse is INVALID_ARGUMENT, not UNKNOWN."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            wire.check(data, message_type)
            return super().decode(data, message_type)
        except Exception as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"malformed request message: {type(exc).__name__}") from exc


def build_services(ctx: ServiceContext, runner: Runner) -> list[object]:
    """The servicers for the mode; a service the mode does not offer answers UNIMPLEMENTED to every call."""
    services: list[object] = [IdentityService(ctx)]
    services.append(ControllerService(ctx) if ctx.config.mode.serves_controller else csi.ControllerBase())
    if ctx.config.mode.serves_node:
        ops = NodeOps(ctx.backend, runner, block_dir=ctx.config.node_block_dir, kubelet_dirs=ctx.config.kubelet_dirs)
        services.append(NodeService(ctx, ops))
    else:
        services.append(csi.NodeBase())
    return services


def remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise errors.Unavailable(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        logger.info("removed stale socket {}", path)
        return
    finally:
        probe.close()
    raise errors.Unavailable(f"another process is serving on {path}")


class DriverServer:
    """One running driver: the backend, the services and the listening socket."""

    def __init__(
        self,
        config: DriverConfig,
        backend: Backend | None,
        runner: Runner,
        *,
        observer: Observer | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        # A controller-mode instance has no backend: it advertises what the same settings give the nodes.
        feats = backend.features if backend is not None else merged_features(config.pools)
        self.metrics: DriverMetrics | None = None
        if config.metrics_address and observer is None:
            self.metrics = observer = DriverMetrics(backend, driver=config.driver_name,
                                                    backend_name=config.backend_name, version=config.version)
        self.ctx = ServiceContext(config, feats, backend, observer=observer)
        self.services = build_services(self.ctx, runner)  # grpclib's Server binds the running loop: made in run()
        self.endpoint = Endpoint.parse(config.endpoint)
        self.stopping = anyio.Event()

    async def _check_socket(self) -> None:
        """Refuse a socket path another process serves on; remove a stale socket."""
        if self.endpoint.path:
            directory = os.path.dirname(self.endpoint.path)
            await anyio.to_thread.run_sync(lambda: os.makedirs(directory, mode=0o750, exist_ok=True))
            await anyio.to_thread.run_sync(remove_stale_socket, self.endpoint.path)

    async def _listen(self) -> Server:
        server = Server(self.services, codec=RequestCodec())  # type: ignore[arg-type]
        if self.endpoint.path:
            await self._check_socket()  # again: another instance may have started listening meanwhile
            old = os.umask(0o117)
            try:
                await server.start(path=self.endpoint.path)
            finally:
                os.umask(old)
            os.chmod(self.endpoint.path, SOCKET_MODE)
        else:
            await server.start(host=self.endpoint.host, port=self.endpoint.port)
        logger.info(
            "serving {} ({} mode, {} backend, node {}) on {}", self.config.driver_name, self.config.mode.value,
            self.config.backend_name, self.config.node_id, self.config.endpoint,
        )
        return server

    async def run(self, *, handle_signals: bool = True) -> None:
        await self._check_socket()
        if self.backend is not None:
            await self.backend.lock_storage()
            await self.backend.start()
        try:
            async with anyio.create_task_group() as tg:
                self.ctx.supervisor.bind(tg)
                if self.metrics is not None:  # up before the socket answers, so a ready driver is observable
                    await tg.start(self.metrics.serve, self.config.metrics_address)
                server = await self._listen()
                memory.release_unused()
                try:
                    if handle_signals:
                        tg.start_soon(self._wait_for_signal)
                    await self.stopping.wait()
                    await self._drain(server)
                    tg.cancel_scope.cancel()
                finally:
                    server.close()
                    if self.endpoint.path:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.endpoint.path)
        finally:
            if self.backend is not None:
                # Not in a shield scope: a backend may leave a task group it entered in start() (same task).
                await self.backend.close()
        logger.info("stopped")

    async def _wait_for_signal(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logger.info("received {}, draining", signal.Signals(signum).name)
                self.stopping.set()
                return

    def stop(self) -> None:
        self.stopping.set()

    async def _drain(self, server: Server) -> None:
        listener = server._server  # stop accepting; grpclib's close() would cancel in-flight calls
        if listener is not None:
            listener.close()
        with anyio.move_on_after(self.config.shutdown_grace_seconds) as scope:
            await self.ctx.supervisor.idle()
        if scope.cancelled_caught:
            logger.warning("in-flight calls still running after {} s; closing anyway",
                           self.config.shutdown_grace_seconds)
        server.close()
        with anyio.move_on_after(5):
            await server.wait_closed()
