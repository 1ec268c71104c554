"""The conformance suite (e2e/conformance) inside the kernel lane.

* against ``localcsi serve --backend lvm``: thin mount ext4 (all specs,
  snapshots and clones included), thick mount ext4 (no thin pool: the
  snapshot and clone specs do not apply) and thin raw block; each run must
  skip exactly the specs listed for it;
* against loopfile ext4, the one online-expansion spec the host cannot run
  (EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE, which root has here).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.suite import assert_passed, run_suite, suite_args
from tests.conformance.test_loopfile import MOUNT_ONLY, ONLINE_EXPAND_SPEC
from tests.kernel.lvmdriver import lvm_driver
from tests.kernel.lvmtools import VolumeGroup
from tests.support import DriverProcess, assert_no_leaks

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.slow]
NODE_ID = "conformance-node"

#: Under TCG the suite takes 7.5 min thin (112 specs, snapshots included), 4.5 min thick (85 specs: snapshots
#: and clones do not apply) and 5.5 min thin raw block; CI runs all three.

#: Without a thin pool lvm offers no snapshots and no clones: the thick run skips these specs, and no others.
SNAPSHOTS_AND_CLONES = frozenset({
    *(f"test_snapshots::test_{name}" for name in (
        "create_snapshot_without_name_is_invalid", "create_snapshot_without_source_is_invalid",
        "create_snapshot_describes_the_snapshot", "create_snapshot_same_name_same_source_is_idempotent",
        "create_snapshot_same_name_other_source_already_exists", "create_snapshot_accepts_maximum_length_name",
        "delete_snapshot_without_id_is_invalid", "delete_snapshot_of_unknown_id_succeeds",
        "delete_snapshot_twice_succeeds", "list_snapshots_shows_created_and_hides_deleted",
        "list_snapshots_filters_by_snapshot_id", "list_snapshots_of_unknown_snapshot_id_is_empty",
        "list_snapshots_filters_by_source_volume", "list_snapshots_of_unknown_source_volume_is_empty",
        "list_snapshots_pages_cover_everything_once", "list_snapshots_with_invalid_token_is_aborted",
        "get_snapshot_without_id_is_invalid", "get_snapshot_of_unknown_id_is_not_found",
        "get_snapshot_describes_the_snapshot", "create_volume_from_snapshot",
        "create_volume_from_snapshot_same_name_is_idempotent",
        "create_volume_name_reused_with_other_source_already_exists",
    )),
    "test_controller::test_create_volume_from_missing_snapshot_is_not_found",
    "test_controller::test_create_volume_from_missing_volume_is_not_found",
    "test_controller::test_create_volume_clone_of_existing_volume",
    "test_lifecycle::test_volume_restored_from_snapshot_holds_the_snapshot_data",
    "test_lifecycle::test_cloned_volume_holds_the_source_data",
    # The argument-before-lookup specs whose request is a snapshot's, or a volume made from a content source.
    *(f"test_arguments::test_a_missing_required_field_is_invalid_whatever_volume_is_named[{who}-{spec}]"
      for who in ("deleted", "never-issued")
      for spec in ("CreateSnapshot-without-name", "CreateVolume-without-name",
                   "CreateVolume-without-volume_capabilities")),
})

# (id, thin pool, access, the specs that run skips)
LVM_CONFIGS = [
    pytest.param(True, "mount", frozenset(), id="thin-mount-ext4"),
    pytest.param(False, "mount", SNAPSHOTS_AND_CLONES, id="thick-mount-ext4"),
    pytest.param(True, "block", MOUNT_ONLY, id="thin-block"),
]


@pytest.fixture
def lvm_conformance_driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                           lvm_vg: VolumeGroup) -> Iterator[DriverProcess]:
    thin: bool = request.param
    proc = lvm_driver(tmp_path_factory.mktemp("conformance-lvm"), lvm_vg, thin=thin, node_id=NODE_ID)
    with proc.running(timeout=120):
        yield proc


@pytest.mark.timeout(1500)
@pytest.mark.parametrize(("lvm_conformance_driver", "access", "skipped"), LVM_CONFIGS,
                         indirect=["lvm_conformance_driver"])
def test_lvm_passes_the_conformance_suite(lvm_conformance_driver: DriverProcess, access: str,
                                          skipped: frozenset[str]) -> None:
    driver = lvm_conformance_driver
    run = run_suite(suite_args(driver, access), driver.root / "junit.xml", timeout=1400)
    assert_passed(run, driver, skipped=skipped, minimum=50)
    assert_no_leaks(driver, "by the suite's cleanup")
    assert driver.stop() == 0


@pytest.fixture
def loopfile_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriverProcess]:
    with DriverProcess(tmp_path_factory.mktemp("conformance-loopfile"), node_id=NODE_ID).running(timeout=120) as proc:
        yield proc


@pytest.mark.timeout(600)
def test_loopfile_ext4_grows_online_what_the_workload_sees(loopfile_driver: DriverProcess) -> None:
    args = [*suite_args(loopfile_driver, "mount"), "-k", ONLINE_EXPAND_SPEC]
    run = run_suite(args, loopfile_driver.root / "junit.xml", timeout=500)
    assert_passed(run, loopfile_driver, skipped=(), minimum=1)
    assert run.passed == 1, f"the spec was skipped or not selected: {run.summary()}"
    assert_no_leaks(loopfile_driver)
    assert loopfile_driver.images() == []
