"""The server (csi/server.py): the services a mode offers, its socket, a malformed request, and the SIGTERM drain.

The in-process tests run a :class:`DriverServer` over the scripted backend on a unix socket of their own;
the last one runs a real ``localcsi serve`` through a crash and a graceful stop.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor

from backends import errors
from backends.base import VolumeSpec
from backends.ids import volume_id_for
from backends.system.testing import FakeRunner
from csi.config import DriverConfig, Mode
from csi.context import ServiceContext
from csi.gen.csi import v1 as csi
from csi.server import SOCKET_MODE, DriverServer, RequestCodec, build_services, remove_stale_socket
from tests.csi.scripted import DRIVER, NODE, POOLS, ScriptedBackend, answers, wait_for_socket
from tests.support import DriverProcess, connect, create_request

pytestmark = pytest.mark.anyio
NO_COMMANDS = FakeRunner(lambda argv: (1, "", "no command runs in these tests"))


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on: what a killed driver leaves."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    """A socket another process serves on."""
    path = tmp_path / "live.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    try:
        yield path
    finally:
        sock.close()


def test_a_stale_socket_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "csi.sock"
    remove_stale_socket(str(path))  # nothing there: nothing to do
    stale_socket(path)
    assert stat.S_ISSOCK(path.lstat().st_mode)
    remove_stale_socket(str(path))
    assert not path.exists()


def test_a_live_socket_or_another_file_is_refused_and_kept(tmp_path: Path, listening: Path) -> None:
    with pytest.raises(errors.Unavailable, match="another process is serving"):
        remove_stale_socket(str(listening))
    assert listening.exists()
    regular = tmp_path / "not-a-socket"
    regular.write_text("data")
    with pytest.raises(errors.Unavailable, match="is not a socket"):
        remove_stale_socket(str(regular))
    assert regular.read_text() == "data"


def config(endpoint: str, mode: Mode = Mode.ALL, grace: float = 20.0) -> DriverConfig:
    return DriverConfig(DRIVER, NODE, endpoint, POOLS, mode=mode, shutdown_grace_seconds=grace)


@pytest.mark.parametrize("mode", list(Mode))
async def test_a_service_the_mode_does_not_offer_answers_unimplemented(mode: Mode) -> None:
    backend = ScriptedBackend() if mode.has_storage else None
    ctx = ServiceContext(config("unix:///unused", mode), ScriptedBackend().features, backend)
    services: list[Any] = build_services(ctx, NO_COMMANDS)
    async with ChannelFor(services) as channel:
        assert (await csi.IdentityStub(channel).probe(csi.ProbeRequest())).ready is True
        for serves, call in (
            (mode.serves_controller, csi.ControllerStub(channel).controller_get_capabilities(
                csi.ControllerGetCapabilitiesRequest())),
            (mode.serves_node, csi.NodeStub(channel).node_get_info(csi.NodeGetInfoRequest())),
        ):
            if serves:
                await call
            else:
                with pytest.raises(GRPCError) as caught:
                    await call
                assert caught.value.status is Status.UNIMPLEMENTED


def test_a_request_that_does_not_parse_is_invalid_argument() -> None:
    request = create_request("pvc-1")
    assert RequestCodec().decode(bytes(request), csi.CreateVolumeRequest) == request
    with pytest.raises(GRPCError) as caught:
        RequestCodec().decode(b"\x0a\x05ab", csi.CreateVolumeRequest)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert "malformed request message" in (caught.value.message or "")


async def test_the_socket_replaces_a_stale_one_is_0660_and_goes_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "run" / "csi.sock"
    path.parent.mkdir()
    stale_socket(path)
    backend = ScriptedBackend()
    server = DriverServer(config(f"unix://{path}"), backend, NO_COMMANDS)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.run(handle_signals=False))
        await wait_for_socket(path)
        assert stat.S_IMODE(path.stat().st_mode) == SOCKET_MODE
        server.stop()
    assert not path.exists()
    assert backend.lifecycle == ["lock", "start", "close"]


async def test_a_live_socket_is_not_taken_over(listening: Path) -> None:
    backend = ScriptedBackend()
    server = DriverServer(config(f"unix://{listening}"), backend, NO_COMMANDS)
    with pytest.raises(BaseException) as caught:  # a task group wraps it in an exception group
        await server.run(handle_signals=False)
    assert "another process is serving" in str(innermost(caught.value))
    assert listening.exists()
    assert backend.lifecycle == [], "a second instance must not lock, recover or start the storage it would share"


def innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def test_sigterm_stops_accepting_and_drains_the_call_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "csi.sock"
    release, started = anyio.Event(), anyio.Event()

    async def slow(spec: VolumeSpec) -> None:
        started.set()
        await release.wait()

    backend = ScriptedBackend(slow)
    server = DriverServer(config(f"unix://{path}"), backend, NO_COMMANDS)
    before = signal.getsignal(signal.SIGTERM)
    answered: list[csi.CreateVolumeResponse] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run)
            await wait_for_socket(path)
            with anyio.fail_after(10):  # the server's signal receiver is in place before we signal
                while signal.getsignal(signal.SIGTERM) == before:
                    await anyio.sleep(0.01)
            channel = Channel(path=str(path))

            async def create() -> None:
                answered.append(await csi.ControllerStub(channel).create_volume(create_request("pvc-drained")))

            tg.start_soon(create)
            await started.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            with anyio.fail_after(10):
                while await answers(path):  # the listener closes; the call in flight goes on
                    await anyio.sleep(0.02)
            assert not answered and backend.lifecycle == ["lock", "start"]
            release.set()
        channel.close()
    finally:
        signal.signal(signal.SIGTERM, before)
    assert [r.volume.volume_id for r in answered if r.volume] == [volume_id_for("pvc-drained")]
    assert backend.lifecycle == ["lock", "start", "close"]
    assert not path.exists()


async def test_the_drain_gives_up_after_the_grace_period(tmp_path: Path) -> None:
    path = tmp_path / "csi.sock"
    started = anyio.Event()

    async def hangs(spec: VolumeSpec) -> None:
        started.set()
        await anyio.sleep_forever()

    server = DriverServer(config(f"unix://{path}", grace=0.2), ScriptedBackend(hangs), NO_COMMANDS)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.run(handle_signals=False))
        await wait_for_socket(path)
        channel = Channel(path=str(path))
        tg.start_soon(lambda: csi.ControllerStub(channel).create_volume(create_request("pvc-hangs"), timeout=30))
        await started.wait()
        with anyio.fail_after(10):
            server.stop()
            while path.exists():
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    channel.close()


@pytest.mark.root
async def test_socket_mode_stale_socket_and_graceful_stop(driver: DriverProcess) -> None:
    assert stat.S_IMODE(os.stat(driver.socket_path).st_mode) == 0o660
    driver.kill9()
    assert os.path.exists(driver.socket_path)  # left behind by the crash
    driver.start()  # removes the stale socket and serves again
    async with connect(driver.socket_path) as c:
        assert (await c.identity.probe(csi.ProbeRequest())).ready is True
    assert driver.stop() == 0
    assert not os.path.exists(driver.socket_path)
