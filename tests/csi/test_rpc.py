"""The per-RPC wrapper (csi/rpc.py): per-volume ABORTED, mutations that outlive their caller, logs without secrets."""

from __future__ import annotations

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from loguru import logger

from backends import errors
from backends.base import VolumeSpec
from csi.gen.csi import v1 as csi
from csi.rpc import Supervisor, redact
from tests.csi.scripted import ScriptedBackend, serve
from tests.support import DriverProcess, connect, create_request

pytestmark = pytest.mark.anyio


async def test_busy_volume_answers_aborted_and_torn_call_finishes() -> None:
    release = anyio.Event()
    finished: list[str] = []

    async def slow(spec: VolumeSpec) -> None:
        await release.wait()
        finished.append(spec.name)

    backend = ScriptedBackend(slow)
    async with serve(backend) as ch:
        stub = csi.ControllerStub(ch)
        with pytest.raises(TimeoutError):  # grpclib's client-side deadline
            await stub.create_volume(create_request("pvc-slow"), timeout=0.2)
        with pytest.raises(GRPCError) as busy:
            await stub.create_volume(create_request("pvc-slow"))
        assert busy.value.status == Status.ABORTED
        release.set()
        with anyio.fail_after(5):
            while not finished:
                await anyio.sleep(0.01)
        backend.on_create = None
        again = await stub.create_volume(create_request("pvc-slow"))
    assert finished == ["pvc-slow"]
    assert again.volume is not None and len(backend.volumes) == 1


async def test_the_supervisor_finishes_a_mutation_whose_caller_was_cancelled() -> None:
    supervisor = Supervisor()
    started, release, finished = anyio.Event(), anyio.Event(), []

    async def mutation() -> str:
        started.set()
        await release.wait()
        finished.append("mkfs done")
        return "ok"

    async with anyio.create_task_group() as server:
        supervisor.bind(server)
        async with anyio.create_task_group() as client:
            client.start_soon(supervisor.run, mutation)
            await started.wait()
            client.cancel_scope.cancel()  # the caller's deadline expired: grpclib cancels the handler
        assert (supervisor.active, finished) == (1, [])
        release.set()
        with anyio.fail_after(5):
            await supervisor.idle()
    assert (supervisor.active, finished) == (0, ["mkfs done"])


async def test_the_supervisor_returns_the_result_and_raises_the_error_to_a_waiting_caller() -> None:
    supervisor = Supervisor()

    async def fails() -> None:
        raise errors.VolumeConflict("other size")

    async def answers() -> int:
        return 42

    assert await supervisor.run(answers) == 42  # unbound: runs in the caller
    async with anyio.create_task_group() as server:
        supervisor.bind(server)
        assert await supervisor.run(answers) == 42
        with pytest.raises(errors.VolumeConflict):
            await supervisor.run(fails)
    assert supervisor.active == 0


def test_redact_replaces_secrets_by_their_count_and_leaves_the_request_alone() -> None:
    request = create_request("pvc-1")
    request.secrets = {"password": "hunter2", "token": "t0k3n"}
    logged = redact(request)
    assert logged["secrets"] == "<2 redacted>"
    assert logged["name"] == "pvc-1"
    assert request.secrets == {"password": "hunter2", "token": "t0k3n"}
    assert "secrets" not in redact(csi.NodeGetInfoRequest())


class Recorded:
    """The observer: one (rpc, status) per finished call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Status]] = []

    def rpc_finished(self, rpc: str, status: Status, seconds: float) -> None:
        assert seconds >= 0.0
        self.calls.append((rpc, status))


async def test_each_call_logs_its_request_without_secrets_and_one_outcome_line() -> None:
    sentinel = "s3cr3t-sentinel-value"
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{level} {message} {extra}")
    observer = Recorded()
    try:
        async with serve(ScriptedBackend(), observer=observer) as ch:
            request = create_request("pvc-logged")
            request.secrets = {"password": sentinel}
            created = await csi.ControllerStub(ch).create_volume(request)
            assert created.volume is not None
            with pytest.raises(GRPCError):
                await csi.ControllerStub(ch).controller_get_volume(csi.ControllerGetVolumeRequest(
                    volume_id="lcv-" + "0" * 32))
    finally:
        logger.remove(sink)
    assert not [line for line in lines if sentinel in line]
    (logged,) = [line for line in lines if "CreateVolume request" in line]
    assert logged.startswith("DEBUG") and "<1 redacted>" in logged and "pvc-logged" in logged
    (outcome,) = [line for line in lines if line.startswith("INFO CreateVolume OK in")]
    assert "'volume_id': ''" in outcome and "'rpc': 'CreateVolume'" in outcome
    (missing,) = [line for line in lines if "ControllerGetVolume NOT_FOUND" in line]
    assert missing.startswith("WARNING") and f"'volume_id': 'lcv-{'0' * 32}'" in missing
    assert observer.calls == [("CreateVolume", Status.OK), ("ControllerGetVolume", Status.NOT_FOUND)]


@pytest.mark.root
async def test_secrets_never_logged(driver: DriverProcess) -> None:
    sentinel = "s3cr3t-sentinel-value"
    async with connect(driver.socket_path) as c:
        req = create_request("pvc-secret")
        req.secrets = {"password": sentinel}
        vol = (await c.controller.create_volume(req)).volume
        assert vol is not None
        await c.controller.delete_volume(csi.DeleteVolumeRequest(volume_id=vol.volume_id, secrets={"k": sentinel}))
    assert "pvc-secret" in driver.wait_for_log("DeleteVolume OK")
    assert sentinel not in driver.log()
