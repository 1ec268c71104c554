"""The driver's configuration (csi/config.py): endpoints as the server and the clients parse them, and the modes."""

from __future__ import annotations

import pytest

from backends.lvm.options import LvmOptions
from backends.pools import PoolSpec
from csi.config import DriverConfig, Endpoint, Mode


@pytest.mark.parametrize(("value", "endpoint"), [
    ("unix:///run/localcsi/csi.sock", Endpoint(path="/run/localcsi/csi.sock")),
    ("unix:/run/csi.sock", Endpoint(path="/run/csi.sock")),
    ("/var/lib/kubelet/plugins/localcsi.dev/csi.sock", Endpoint(path="/var/lib/kubelet/plugins/localcsi.dev/csi.sock")),
    ("/tmp/a b/csi.sock", Endpoint(path="/tmp/a b/csi.sock")),  # a bare absolute path is taken as it is
    ("tcp://127.0.0.1:10000", Endpoint(host="127.0.0.1", port=10000)),
    ("tcp://localhost:1", Endpoint(host="localhost", port=1)),
    ("tcp://[::1]:9000", Endpoint(host="::1", port=9000)),
])
def test_endpoints_that_parse(value: str, endpoint: Endpoint) -> None:
    assert Endpoint.parse(value) == endpoint
    if ":" not in endpoint.host:  # (str() of an IPv6 endpoint drops the brackets: only clients print it)
        assert Endpoint.parse(str(endpoint)) == endpoint  # str() gives back a form parse() takes


@pytest.mark.parametrize("value", [
    "unix://run/csi.sock",  # "run" is the host part: the path is not absolute
    "unix:relative/csi.sock", "unix://", "relative/csi.sock", "csi.sock", "",
])
def test_unix_endpoints_need_an_absolute_path(value: str) -> None:
    with pytest.raises(ValueError, match=r"absolute path|unix:///path or tcp://host:port"):
        Endpoint.parse(value)


@pytest.mark.parametrize("value", [
    "tcp://host", "tcp://host:0", "tcp://:80", "tcp://host:99999", "tcp://host:port", "tcp:///path",
    "http://host:80", "dns:///localcsi:10000",
])
def test_malformed_endpoints_are_refused_naming_both_forms(value: str) -> None:
    with pytest.raises(ValueError, match=r"unix:///path or tcp://host:port") as caught:
        Endpoint.parse(value)
    assert repr(value) in str(caught.value)


def test_str_names_the_scheme() -> None:
    assert str(Endpoint(path="/run/csi.sock")) == "unix:///run/csi.sock"
    assert str(Endpoint(host="0.0.0.0", port=10000)) == "tcp://0.0.0.0:10000"


@pytest.mark.parametrize(("mode", "controller", "node", "storage"), [
    (Mode.ALL, True, True, True),
    (Mode.CONTROLLER, True, False, False),
    (Mode.NODE, False, True, True),
])
def test_modes(mode: Mode, controller: bool, node: bool, storage: bool) -> None:
    assert (mode.serves_controller, mode.serves_node, mode.has_storage) == (controller, node, storage)
    assert Mode(mode.value) is mode


def test_the_config_is_frozen_and_names_its_backend() -> None:
    config = DriverConfig("localcsi.dev", "n1", "unix:///x", (PoolSpec("default", LvmOptions(vg="vg0")),))
    assert config.backend_name == "lvm"
    assert (config.mode, config.kubelet_dirs, config.shutdown_grace_seconds) == (Mode.ALL, (), 20.0)
    with pytest.raises(AttributeError):
        config.node_id = "n2"  # type: ignore[misc]
