"""The conformance suite (e2e/conformance) inside the kernel lane.

* against ``localcsi serve --backend lvm``: thin mount ext4 (all specs,
  snapshots and clones included), thick mount ext4 (no thin pool: the
  snapshot and clone specs do not apply) and thin raw block;
* against loopfile ext4, the one online-expansion spec the host cannot run
  (EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE, which root has here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.suite import SuiteRun, run_suite
from tests.conformance.test_loopfile import ONLINE_EXPAND_SPEC
from tests.kernel.lvmdriver import NO_LEAKS, leaks, lvm_driver
from tests.kernel.lvmtools import VolumeGroup
from tests.support import DriverProcess

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.slow]
NODE_ID = "conformance-node"

#: Under TCG the suite takes 7.5 min thin (112 specs, snapshots included), 4.5 min thick (85 specs: snapshots
#: and clones do not apply) and 5.5 min thin raw block; CI runs all three.

# (id, thin pool, access)
LVM_CONFIGS = [
    pytest.param(True, "mount", id="thin-mount-ext4"),
    pytest.param(False, "mount", id="thick-mount-ext4"),
    pytest.param(True, "block", id="thin-block"),
]


def suite_args(driver: DriverProcess, access: str, fs_type: str = "ext4") -> list[str]:
    staging = driver.kubelet_dir / "staging"
    target = driver.kubelet_dir / "pods"
    staging.mkdir(parents=True)
    target.mkdir(parents=True)
    return [
        "--csi-endpoint", driver.endpoint,
        "--csi-staging-dir", str(staging), "--csi-target-dir", str(target),
        "--csi-access", access, "--csi-fs-type", fs_type,
    ]  # fmt: skip


def assert_passed(run: SuiteRun, driver: DriverProcess, minimum: int) -> None:
    print(run.output)
    assert run.tests >= minimum, f"the suite did not run (exit {run.returncode}):\n{run.output}"
    assert run.failures == 0 and run.errors == 0, (
        f"{run.summary()}; failing specs:\n  " + "\n  ".join(run.failed_specs)
        + f"\n\n{run.output}\n\ndriver log (tail):\n{driver.log(8000)}"
    )
    assert run.returncode == 0, run.output


@pytest.fixture
def lvm_conformance_driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                           lvm_vg: VolumeGroup) -> Iterator[DriverProcess]:
    thin: bool = request.param
    proc = lvm_driver(tmp_path_factory.mktemp("conformance-lvm"), lvm_vg, thin=thin, node_id=NODE_ID)
    proc.start(timeout=120)
    try:
        yield proc
    finally:
        proc.cleanup()


@pytest.mark.timeout(1500)
@pytest.mark.parametrize(("lvm_conformance_driver", "access"), LVM_CONFIGS, indirect=["lvm_conformance_driver"])
def test_lvm_passes_the_conformance_suite(lvm_conformance_driver: DriverProcess, access: str,
                                          lvm_vg: VolumeGroup) -> None:
    driver = lvm_conformance_driver
    run = run_suite(suite_args(driver, access), driver.root / "junit.xml", timeout=1400)
    assert_passed(run, driver, minimum=50)
    assert leaks(driver, lvm_vg.name) == NO_LEAKS, "the suite's cleanup left LVs, dm devices or mounts"
    assert driver.stop() == 0


@pytest.fixture
def loopfile_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    proc = DriverProcess(tmp_path_factory.mktemp("conformance-loopfile"), node_id=NODE_ID)
    proc.start(timeout=120)
    try:
        yield proc
    finally:
        proc.cleanup()


@pytest.mark.timeout(600)
def test_loopfile_ext4_grows_online_what_the_workload_sees(loopfile_driver: DriverProcess) -> None:
    args = [*suite_args(loopfile_driver, "mount"), "-k", ONLINE_EXPAND_SPEC]
    run = run_suite(args, loopfile_driver.root / "junit.xml", timeout=500)
    assert_passed(run, loopfile_driver, minimum=1)
    assert run.passed == 1, f"the spec was skipped or not selected: {run.summary()}"
    assert loopfile_driver.leaks() == {"mounts": [], "loops": []}
    assert loopfile_driver.images() == []
