"""The conformance suite against a real ``localcsi serve --backend loopfile`` process.

One run per access configuration. ext4 online growth needs CAP_SYS_RESOURCE
(the host lacks it; the kernel lane has it), so where it is missing the ext4
run leaves out the one online-expansion spec and the xfs run, whose online
grow needs no such capability, covers it instead. Each run must skip exactly
the specs listed for it: loopfile advertises everything the suite tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.suite import assert_passed, record, run_suite, suite_args
from tests.support import DriverProcess, assert_no_leaks

NODE_ID = "conformance-node"
ONLINE_EXPAND_SPEC = "test_node_expand_after_publish_grows_what_the_workload_sees"
CAP_SYS_RESOURCE = 24
#: Specs that need a filesystem: a raw block run skips them, and nothing else.
MOUNT_ONLY = frozenset({
    "test_lifecycle::test_readonly_publish_refuses_writes",
    "test_lifecycle::test_stage_at_same_path_with_other_filesystem_already_exists",
})

# (id, access, fs_type, the specs that run skips)
CONFIGS = [
    ("mount-ext4", "mount", "ext4", frozenset()),
    ("block", "block", "ext4", MOUNT_ONLY),
    ("mount-xfs", "mount", "xfs", frozenset()),
]


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


@pytest.fixture
def conformance_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    with DriverProcess(tmp_path_factory.mktemp("conformance"), node_id=NODE_ID).running() as proc:
        yield proc


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("access", "fs_type", "skipped"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_conformance_suite_passes(conformance_driver: DriverProcess, access: str, fs_type: str,
                                  skipped: frozenset[str], conformance_results: list[str]) -> None:
    args = suite_args(conformance_driver, access, fs_type)
    label = f"{access}/{fs_type}" if access == "mount" else access
    if access == "mount" and fs_type == "ext4" and not has_cap_sys_resource():
        args += ["--deselect", f"e2e/conformance/test_node.py::{ONLINE_EXPAND_SPEC}"]
        label += f" (without {ONLINE_EXPAND_SPEC}: no CAP_SYS_RESOURCE here)"
    run = run_suite(args, conformance_driver.root / "junit.xml")
    record(conformance_results, label, run)
    assert_passed(run, conformance_driver, skipped=skipped, minimum=51)
    # Every volume the suite made was deleted through the driver, so nothing may remain.
    assert_no_leaks(conformance_driver, "by the suite's cleanup")
    assert conformance_driver.images() == [], "the suite's cleanup left volume images"
    assert conformance_driver.stop() == 0
