"""``localcsi serve`` (csi/cli/serve.py): flags and the environment become the frozen config; bad ones fail fast."""

from __future__ import annotations

import argparse
import dataclasses
import socket
from pathlib import Path
from typing import Any, cast, get_type_hints

import pytest

import backends
from backends.options import OptionError, Options
from backends.pools import PoolSpec
from csi.cli.main import build_parser
from csi.cli.serve import config_from
from csi.config import DriverConfig, Mode
from tests.support import DriverProcess, localcsi

ENDPOINT = "unix:///run/localcsi/csi.sock"


def test_serve_without_endpoint_fails_fast() -> None:
    out = localcsi("serve", "--node-id", "n1")
    assert out.returncode == 2
    assert "--endpoint" in out.stderr


def test_serve_with_bad_endpoint_fails_fast() -> None:
    out = localcsi("serve", "--endpoint", "http://x", "--node-id", "n1")
    assert out.returncode == 2
    assert "unix:///path or tcp://host:port" in out.stderr


@pytest.mark.root
def test_serve_with_unusable_directory_fails_fast(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    out = localcsi("serve", "--endpoint", f"unix://{tmp_path}/csi.sock", "--node-id", "n1",
              "--loopfile-dir", str(blocker / "volumes"))
    assert out.returncode == 2
    assert "loopfile directory" in out.stderr
    assert not (tmp_path / "csi.sock").exists()


@pytest.mark.root
def test_serve_refuses_a_socket_another_driver_serves(driver: DriverProcess) -> None:
    out = localcsi("serve", "--endpoint", driver.endpoint, "--node-id", "n2",
              "--loopfile-dir", str(driver.root / "other"))
    assert out.returncode == 2
    assert "another process is serving" in out.stderr


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("serve").parse_args(["serve", *argv])


def test_the_driver_flags_fill_the_frozen_config(tmp_path: Path) -> None:
    args = parse("--endpoint", ENDPOINT, "--node-id", "node-7", "--driver-name", "example.dev", "--mode", "controller",
                 "--command-prefix", "nsenter -t 1 -m --", "--kubelet-dir", "/var/lib/kubelet",
                 "--kubelet-dir", "relative/kubelet", "--max-volumes-per-node", "12",
                 "--metrics-address", "127.0.0.1:9808", "--shutdown-grace", "5")
    config = config_from(args, "1.2.3")
    assert config == DriverConfig(
        driver_name="example.dev", node_id="node-7", endpoint=ENDPOINT,
        pools=(PoolSpec("default", backends.options_class("loopfile")(), default=True),),
        mode=Mode.CONTROLLER, command_prefix=("nsenter", "-t", "1", "-m", "--"),
        kubelet_dirs=("/var/lib/kubelet", str(Path.cwd() / "relative/kubelet")), max_volumes_per_node=12,
        shutdown_grace_seconds=5.0, metrics_address="127.0.0.1:9808", version="1.2.3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node_id = "other"  # type: ignore[misc]


def test_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CSI_ENDPOINT", "NODE_ID", "LOCALCSI_RAWDISK_SNAPSHOT_DIR"):
        monkeypatch.delenv(name, raising=False)
    config = config_from(parse("--endpoint", ENDPOINT), "0")
    assert (config.node_id, config.driver_name, config.mode) == (socket.gethostname(), "localcsi.dev", Mode.ALL)
    assert (config.backend_name, config.kubelet_dirs, config.command_prefix) == ("loopfile", (), ())
    assert (config.max_volumes_per_node, config.shutdown_grace_seconds, config.metrics_address) == (0, 20.0, "")


def test_the_endpoint_and_node_id_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSI_ENDPOINT", "unix:///csi/csi.sock")
    monkeypatch.setenv("NODE_ID", "node-from-env")
    config = config_from(parse(), "0")
    assert (config.endpoint, config.node_id) == ("unix:///csi/csi.sock", "node-from-env")
    assert config_from(parse("--node-id", "flag-wins"), "0").node_id == "flag-wins"


def chosen(kind: type, field: dataclasses.Field[Any]) -> tuple[list[str], object]:
    """The flags that set ``field`` to a value that is not its default, and that value."""
    flag, default = field.metadata["flag"], cast(Any, field.default)
    if kind is bool:
        return [flag], not default
    if kind is int or kind is float:
        value = kind(default) + kind(7)
        return [flag, str(value)], value
    if kind == tuple[str, ...]:
        return [flag, "/dev/disk/by-id/a*", flag, "/dev/disk/by-id/b*"], ("/dev/disk/by-id/a*", "/dev/disk/by-id/b*")
    return [flag, f"/srv/{field.name}"], f"/srv/{field.name}"


@pytest.mark.parametrize("name", backends.available())
def test_every_backend_flag_fills_its_field_of_the_backend_options(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each backend's flags come from its options class: every field has a flag, and the flag sets that field."""
    options = backends.options_class(name)
    hints = get_type_hints(options)
    argv, expected = ["--endpoint", ENDPOINT, "--backend", name], {}
    for field in dataclasses.fields(options):
        if field.metadata["env"]:
            monkeypatch.delenv(field.metadata["env"], raising=False)
        flags, expected[field.name] = chosen(hints[field.name], field)
        argv += flags
    config = config_from(parse(*argv), "0")
    assert type(config.backend) is options and config.backend_name == name
    assert config.backend == options(**expected)
    assert config_from(parse("--endpoint", ENDPOINT, "--backend", name), "0").backend == options()


@pytest.mark.parametrize("name", backends.available())
def test_an_option_with_an_environment_variable_falls_back_to_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    options = backends.options_class(name)
    for field in dataclasses.fields(options):
        if not field.metadata["env"]:
            continue
        monkeypatch.setenv(field.metadata["env"], "/from/env")
        assert getattr(config_from(parse("--endpoint", ENDPOINT, "--backend", name), "0").backend, field.name) \
            == "/from/env"
        flag_wins = parse("--endpoint", ENDPOINT, "--backend", name, field.metadata["flag"], "/from/flag")
        assert getattr(config_from(flag_wins, "0").backend, field.name) == "/from/flag"


def test_the_rawdisk_snapshot_dir_has_an_environment_fallback() -> None:
    fields = {f.name: f for f in dataclasses.fields(backends.options_class("rawdisk"))}
    assert fields["snapshot_dir"].metadata["env"] == "LOCALCSI_RAWDISK_SNAPSHOT_DIR"


@pytest.mark.parametrize(("argv", "message"), [
    ([], "--endpoint"),
    (["--endpoint", "http://x"], "unix:///path or tcp://host:port"),
    (["--endpoint", ENDPOINT, "--max-volumes-per-node", "-1"], "must not be negative"),
    (["--endpoint", ENDPOINT, "--metrics-address", "9808"], "HOST:PORT"),
    (["--endpoint", ENDPOINT, "--backend", "nfs"], "unknown backend 'nfs'"),
    (["--endpoint", ENDPOINT, "--loopfile-overcommit", "0.5"], "at least 1.0"),
    (["--endpoint", ENDPOINT, "--backend", "lvm", "--lvm-thin-overprovision", "0"], "at least 1.0"),
])
def test_bad_settings_are_a_value_error_naming_the_flag(argv: list[str], message: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSI_ENDPOINT", raising=False)
    with pytest.raises(ValueError, match=message):
        config_from(parse(*argv), "0")


def test_an_option_error_is_a_value_error() -> None:
    assert issubclass(OptionError, ValueError) and issubclass(backends.options_class("lvm"), Options)
