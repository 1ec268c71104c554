"""The conformance suite against a real ``localcsi serve --backend loopfile`` process.

One run per access configuration. ext4 online growth needs CAP_SYS_RESOURCE
(the host lacks it; the kernel lane has it), so where it is missing the ext4
run leaves out the one online-expansion spec and the xfs run, whose online
grow needs no such capability, covers it instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.suite import NEEDS_MOUNT, run_suite
from tests.support import DriverProcess

NODE_ID = "conformance-node"
ONLINE_EXPAND_SPEC = "test_node_expand_after_publish_grows_what_the_workload_sees"
CAP_SYS_RESOURCE = 24

# (id, access, fs_type)
CONFIGS = [
    ("mount-ext4", "mount", "ext4"),
    ("block", "block", "ext4"),
    ("mount-xfs", "mount", "xfs"),
]
#: loopfile advertises every capability the suite checks: only the two mount-only specs skip, in the block run.
ALLOWED_SKIPS = {"block": {NEEDS_MOUNT: 2}}


def has_cap_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


@pytest.fixture
def conformance_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    proc = DriverProcess(tmp_path_factory.mktemp("conformance"), node_id=NODE_ID)
    proc.start()
    try:
        yield proc
    finally:
        proc.cleanup()


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("access", "fs_type"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_conformance_suite_passes(conformance_driver: DriverProcess, access: str, fs_type: str,
                                  conformance_results: list[str]) -> None:
    staging = conformance_driver.kubelet_dir / "staging"
    target = conformance_driver.kubelet_dir / "pods"
    staging.mkdir()
    target.mkdir()
    args = [
        "--csi-endpoint", conformance_driver.endpoint,
        "--csi-staging-dir", str(staging), "--csi-target-dir", str(target),
        "--csi-access", access, "--csi-fs-type", fs_type,
    ]
    label = f"{access}/{fs_type}" if access == "mount" else access
    if access == "mount" and fs_type == "ext4" and not has_cap_sys_resource():
        args += ["--deselect", f"e2e/conformance/test_node.py::{ONLINE_EXPAND_SPEC}"]
        label += f" (without {ONLINE_EXPAND_SPEC}: no CAP_SYS_RESOURCE here)"
    run = run_suite(args, conformance_driver.root / "junit.xml")
    conformance_results.append(f"{label}: {run.summary()}")
    conformance_results.extend(f"  FAILED {spec}" for spec in run.failed_specs)
    print(run.output)

    leaks = conformance_driver.leaks()
    images = conformance_driver.images()
    assert run.tests > 50, f"the suite did not run (exit {run.returncode}):\n{run.output}"
    assert run.failures == 0 and run.errors == 0, (
        f"{run.summary()}; failing specs:\n  " + "\n  ".join(run.failed_specs)
        + f"\nleft behind: {leaks}, images {images}"
        + f"\n\n{run.output}\n\ndriver log (tail):\n{conformance_driver.log(8000)}"
    )
    assert run.returncode == 0, run.output
    unexpected = run.unexpected_skips(ALLOWED_SKIPS.get(access, {}))
    assert not unexpected, f"skips no missing capability explains: {unexpected}\n{run.output}"
    # Every volume the suite made was deleted through the driver, so nothing may remain.
    assert leaks == {"mounts": [], "loops": []}, "the suite's cleanup left mounts or loops"
    assert images == [], "the suite's cleanup left volume images"
    assert conformance_driver.stop() == 0
