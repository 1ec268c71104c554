"""What every servicer shares (csi/context.py): the backend only where there is storage, the node's topology."""

from __future__ import annotations

import pytest

from backends import errors
from backends.base import TOPOLOGY_KEY, Features
from csi.config import DriverConfig, Mode
from csi.context import ServiceContext, Servicer
from csi.errors import status_for
from tests.csi.scripted import POOLS, ScriptedBackend


def context(backend: ScriptedBackend | None, mode: Mode = Mode.ALL) -> ServiceContext:
    config = DriverConfig("localcsi.dev", "node-7", "unix:///x", POOLS, mode=mode,
                          kubelet_dirs=("/var/lib/kubelet",))
    return ServiceContext(config, Features(), backend)


def test_a_controller_mode_instance_has_no_backend_and_says_so() -> None:
    ctx = context(None, Mode.CONTROLLER)
    with pytest.raises(errors.PreconditionFailed, match="controller mode") as caught:
        _ = ctx.backend
    assert status_for(caught.value).name == "FAILED_PRECONDITION"


def test_the_backend_and_topology_come_from_the_config() -> None:
    backend = ScriptedBackend()
    ctx = context(backend)
    assert ctx.backend is backend
    assert ctx.topology == {TOPOLOGY_KEY: "node-7"}


def test_every_servicer_shares_one_supervisor_and_one_set_of_locks() -> None:
    ctx = context(ScriptedBackend())
    first, second = Servicer(ctx), Servicer(ctx)
    assert first.supervisor is second.supervisor is ctx.supervisor
    assert first.ctx.locks is second.ctx.locks
    assert first.observer is None
