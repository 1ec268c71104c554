"""The conformance suite against a real ``localcsi serve --backend rawdisk`` with loop devices as disks.

The disks are sparse images on loop devices, reachable only through this test's
own symlinks, so the driver can never claim another test's devices. The driver
keeps snapshots in a directory of the test's own (``--rawdisk-snapshot-dir``),
so the suite's snapshot, restore and clone specs run too: only the expansion
specs skip (and, in the block run, those that need a filesystem).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.rawdisk.support import MIB, FakeDisks, RawdiskDriver
from tests.conformance.suite import assert_passed, record, run_suite, suite_args
from tests.conformance.test_loopfile import MOUNT_ONLY
from tests.support import DriverProcess, assert_no_leaks

NODE_ID = "conformance-node"
DISKS = 14
DISK_BYTES = 400 * MIB  # room for xfs (300 MiB minimum) inside our partition
#: A whole disk cannot grow, so rawdisk advertises no expansion: these specs skip, and no others (but for access).
NO_EXPANSION = frozenset({
    "test_controller::test_controller_expand_grows_the_volume",
    "test_controller::test_controller_expand_of_unknown_volume_is_not_found",
    "test_controller::test_controller_expand_without_capacity_range_is_invalid",
    "test_controller::test_controller_expand_without_volume_id_is_invalid",
    "test_node::test_node_expand_after_publish_grows_what_the_workload_sees",
    "test_node::test_node_expand_of_unknown_volume_is_not_found",
    "test_node::test_node_expand_without_volume_id_is_invalid",
    "test_node::test_node_expand_without_volume_path_is_invalid",
    *(f"test_arguments::test_a_missing_required_field_is_invalid_whatever_volume_is_named[{who}-{spec}]"
      for who in ("deleted", "never-issued")
      for spec in ("ControllerExpandVolume-without-capacity_range", "NodeExpandVolume-without-volume_path")),
    *(f"test_arguments::test_node_expand_of_an_unknown_volume_at_a_relative_path_is_not_found[{who}]"
      for who in ("deleted", "never-issued")),
})



@pytest.fixture
def rawdisk_driver() -> Iterator[DriverProcess]:
    disks = FakeDisks()
    try:
        for i in range(DISKS):
            disks.add(f"disk-{i:02d}", DISK_BYTES)
        proc = RawdiskDriver(disks.root / "driver", node_id=NODE_ID, backend="rawdisk", disks=disks,
                             extra_args=("--rawdisk-device", disks.pattern,
                                         "--rawdisk-snapshot-dir", str(snapshot_dir(proc_root(disks)))))
        proc.start()
        try:
            yield proc
        finally:
            proc.kill9()
    finally:
        disks.cleanup()


def proc_root(disks: FakeDisks) -> Path:
    return disks.root / "driver"


def snapshot_dir(root: Path) -> Path:
    return root / "snapshots"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("access", "fs_type", "skipped"), [
    ("mount", "ext4", NO_EXPANSION), ("block", "ext4", NO_EXPANSION | MOUNT_ONLY), ("mount", "xfs", NO_EXPANSION),
], ids=["mount-ext4", "block", "mount-xfs"])
def test_conformance_suite_passes_on_rawdisk(rawdisk_driver: DriverProcess, access: str, fs_type: str,
                                             skipped: frozenset[str], conformance_results: list[str]) -> None:
    args = [*suite_args(rawdisk_driver, access, fs_type), "--csi-volume-size", "64Mi"]
    run = run_suite(args, rawdisk_driver.root / "junit.xml")
    record(conformance_results, f"rawdisk {access}/{fs_type}" if access == "mount" else "rawdisk block", run)
    assert_passed(run, rawdisk_driver, skipped=skipped, minimum=51)
    assert_no_leaks(rawdisk_driver, "by the suite's cleanup (mounts, partition views, claimed disks)")
    assert list(snapshot_dir(rawdisk_driver.root).iterdir()) == [], "snapshot images left behind"
    assert rawdisk_driver.stop() == 0
