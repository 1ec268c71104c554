"""The conformance suite's own plumbing: sizes, parameters, endpoints, the CLI's argv, JUnit counts, the verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.conformance.__main__ import build_parser, pytest_argv
from e2e.conformance.client import open_channel
from e2e.conformance.config import load_secrets, parse_params, parse_size
from tests.conformance.suite import SuiteRun, _from_junit, assert_passed
from tests.support import DriverProcess


@pytest.mark.parametrize(("text", "expected"), [
    ("67108864", 64 << 20), ("64Mi", 64 << 20), ("1Gi", 1 << 30), ("10G", 10 * 1000**3), ("512KiB", 512 << 10),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "Mi", "-1", "1.5Gi", "ten"])
def test_parse_size_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_parse_params_keeps_equals_in_values() -> None:
    assert parse_params(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}


@pytest.mark.parametrize("item", ["novalue", "=v"])
def test_parse_params_rejects_missing_key_or_separator(item: str) -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_params([item])


def test_load_secrets_requires_an_object_of_strings(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"user": "u", "password": "p"}')
    assert load_secrets(str(good)) == {"user": "u", "password": "p"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"user": 1}')
    with pytest.raises(ValueError, match="JSON object of strings"):
        load_secrets(str(bad))
    assert load_secrets("") == {}


@pytest.mark.parametrize("endpoint", ["ftp://x", "tcp://host", "unix://"])
def test_open_channel_rejects_unusable_endpoints(endpoint: str) -> None:
    with pytest.raises(ValueError, match=r"endpoint|socket path"):
        open_channel(endpoint)


def test_cli_translates_flags_and_passes_pytest_args_through(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "--endpoint", "unix:///run/csi.sock", "--staging-dir", str(tmp_path / "s"), "--target-dir", "t",
        "--access", "block", "--param", "k=v", "--param", "x=y",
    ])
    argv = pytest_argv(args, ["-k", "node"])
    assert argv[argv.index("--csi-endpoint") + 1] == "unix:///run/csi.sock"
    assert argv[argv.index("--csi-access") + 1] == "block"
    assert argv[argv.index("--csi-staging-dir") + 1] == str(tmp_path / "s")
    assert Path(argv[argv.index("--csi-target-dir") + 1]).is_absolute()
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--csi-param"] == ["k=v", "x=y"]
    assert argv[-2:] == ["-k", "node"]


def test_junit_counts_and_failed_specs(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest" tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="e2e.conformance.test_node" name="test_a"/>'
        '<testcase classname="e2e.conformance.test_node" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="e2e.conformance.test_node" name="test_c"><error message="y"/></testcase>'
        '<testcase classname="e2e.conformance.test_node" name="test_d"><skipped message="z"/></testcase>'
        "</testsuite></testsuites>"
    )
    run = _from_junit(1, "", junit)
    assert (run.passed, run.failures, run.errors, run.skipped) == (1, 1, 1, 1)
    assert run.failed_specs == ("e2e.conformance.test_node::test_b", "e2e.conformance.test_node::test_c")
    assert run.skipped_specs == ("test_node::test_d",)


def test_a_run_that_skips_other_specs_than_expected_fails(tmp_path: Path) -> None:
    """A spec skipped because the driver stopped advertising its capability fails the run, as one that stops
    skipping does (the expected set is then stale)."""
    run = SuiteRun(0, "", tests=60, failures=0, errors=0, skipped=1, failed_specs=(),
                   skipped_specs=("test_node::test_node_expand_of_unknown_volume_is_not_found",))
    driver = DriverProcess(tmp_path)
    with pytest.raises(AssertionError, match=r"newly skipped \['test_node::test_node_expand_of_unknown"):
        assert_passed(run, driver, skipped=())
    with pytest.raises(AssertionError, match=r"no longer skipped \['test_node::test_x'\]"):
        assert_passed(run, driver, skipped={"test_node::test_x", *run.skipped_specs})
    assert_passed(run, driver, skipped=run.skipped_specs)
