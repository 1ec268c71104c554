"""The benchmark's client (csi/bench/client.py): the same calls over grpclib and grpcio, errors as status names.

Both transports talk to the real servicers over a scripted backend on a unix socket of the test's own. grpcio
runs in a child process: in this one its C core upsets CPython 3.11's recursion accounting, and every later
``ast.parse`` (pytest's assertion rewriting among them) then fails.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from backends.base import VolumeSpec
from backends.ids import volume_id_for
from csi.bench.client import CallFailed, CsiClient, open_transport
from csi.capabilities import CRpc, NRpc
from csi.gen.csi import v1 as csi
from tests.csi.scripted import DRIVER, NODE, ScriptedBackend, serving
from tests.support import REPO, create_request

pytestmark = pytest.mark.anyio
GRPCIO_CALLS = """
import json, sys
import anyio
from csi.bench.client import CallFailed, CsiClient, open_transport
from csi.gen.csi import v1 as csi

async def main(endpoint: str) -> None:
    client = CsiClient(open_transport(endpoint, "grpcio"), timeout=10)
    out = {"ready": (await client.probe()).ready, "name": (await client.plugin_info()).name,
           "controller": sorted(await client.controller_capabilities())}
    for key, call in (("invalid", client.create_volume(csi.CreateVolumeRequest(name=""))),
                      ("missing", open_transport(endpoint + ".none", "grpcio").call(
                          "/csi.v1.Identity/Probe", csi.ProbeRequest(), csi.ProbeResponse, 10))):
        try:
            await call
        except CallFailed as exc:
            out[key] = exc.code
    print(json.dumps(out))

anyio.run(main, sys.argv[1])
"""


@pytest.fixture
async def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def client(tmp_path: Path, backend: ScriptedBackend) -> AsyncIterator[CsiClient]:
    async with serving(tmp_path / "csi.sock", backend) as endpoint:
        client = CsiClient(open_transport(endpoint, "grpclib"), timeout=10)
        try:
            yield client
        finally:
            client.transport.close()


async def test_identity_and_capabilities(client: CsiClient) -> None:
    assert (await client.probe()).ready is True
    assert (await client.plugin_info()).name == DRIVER
    controller = await client.controller_capabilities()
    assert {int(CRpc.CREATE_DELETE_VOLUME), int(CRpc.PUBLISH_UNPUBLISH_VOLUME)} <= controller
    assert int(NRpc.STAGE_UNSTAGE_VOLUME) in await client.node_capabilities()
    assert (await client.node_info()).node_id == NODE


async def test_volume_calls_round_trip(client: CsiClient, backend: ScriptedBackend) -> None:
    created = await client.create_volume(create_request("pvc-bench"))
    assert created.volume is not None and created.volume.volume_id == volume_id_for("pvc-bench")
    listed = await client.list_volumes(0, "")
    assert [e.volume.volume_id for e in listed.entries if e.volume] == [created.volume.volume_id]
    assert (await client.get_capacity({})).available_capacity == 100
    context = await client.controller_publish(csi.ControllerPublishVolumeRequest(
        volume_id=created.volume.volume_id, node_id=NODE, volume_capability=create_request("x").volume_capabilities[0]))
    assert context == {"localcsi.dev/node": NODE}
    await client.controller_unpublish(created.volume.volume_id, NODE)
    await client.delete_volume(created.volume.volume_id)
    assert backend.volumes == {}


async def test_an_error_answer_is_call_failed_with_its_code(client: CsiClient, backend: ScriptedBackend) -> None:
    with pytest.raises(CallFailed) as caught:
        await client.create_volume(csi.CreateVolumeRequest(name=""))
    assert caught.value.code == "INVALID_ARGUMENT" and "name" in caught.value.message
    release, started = anyio.Event(), anyio.Event()

    async def slow(spec: VolumeSpec) -> None:
        started.set()
        await release.wait()

    backend.on_create = slow
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.create_volume, create_request("pvc-slow"))
        await started.wait()
        with pytest.raises(CallFailed) as busy:
            await client.create_volume(create_request("pvc-slow"))
        assert busy.value.code == "ABORTED"
        release.set()


async def test_no_driver_is_unavailable(tmp_path: Path) -> None:
    client = CsiClient(open_transport(f"unix://{tmp_path}/none.sock", "grpclib"), timeout=10)
    try:
        with pytest.raises(CallFailed) as caught:
            await client.probe()
    finally:
        client.transport.close()
    assert caught.value.code == "UNAVAILABLE"


async def test_grpcio_makes_the_same_calls_and_names_the_same_codes(tmp_path: Path) -> None:
    async with serving(tmp_path / "csi.sock", ScriptedBackend()) as endpoint:
        done = await anyio.run_process([sys.executable, "-c", GRPCIO_CALLS, endpoint], cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = json.loads(done.stdout)
    assert (out["ready"], out["name"]) == (True, DRIVER)
    assert int(CRpc.CREATE_DELETE_VOLUME) in out["controller"]
    assert (out["invalid"], out["missing"]) == ("INVALID_ARGUMENT", "UNAVAILABLE")


def test_an_unknown_client_is_refused() -> None:
    with pytest.raises(ValueError, match="grpcio or grpclib"):
        open_transport("unix:///x", "curl")
