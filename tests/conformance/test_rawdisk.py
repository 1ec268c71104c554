"""The conformance suite against a real ``localcsi serve --backend rawdisk`` with loop devices as disks.

The disks are sparse images on loop devices, reachable only through this test's
own symlinks, so the driver can never claim another test's devices. The driver
keeps snapshots in a directory of the test's own (``--rawdisk-snapshot-dir``),
so the suite's snapshot, restore and clone specs run too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.rawdisk_support import MIB, FakeDisks, loops_over
from tests.conformance.suite import NEEDS_MOUNT, NO_CONTROLLER_EXPANSION, NO_NODE_EXPANSION, run_suite
from tests.support import DriverProcess

NODE_ID = "conformance-node"
DISKS = 14
DISK_BYTES = 400 * MIB  # room for xfs (300 MiB minimum) inside our partition


#: rawdisk cannot grow a disk, so it advertises no expansion: those specs skip; in the block run, mount-only ones too.
EXPANSION_SKIPS = {NO_CONTROLLER_EXPANSION: 6, NO_NODE_EXPANSION: 8}
ALLOWED_SKIPS = {"mount": EXPANSION_SKIPS, "block": {**EXPANSION_SKIPS, NEEDS_MOUNT: 2}}


@pytest.fixture
def rawdisk_driver() -> Iterator[DriverProcess]:
    disks = FakeDisks()
    try:
        for i in range(DISKS):
            disks.add(f"disk-{i:02d}", DISK_BYTES)
        proc = DriverProcess(disks.root / "driver", node_id=NODE_ID, backend="rawdisk",
                             extra_args=("--rawdisk-device", disks.pattern,
                                         "--rawdisk-snapshot-dir", str(snapshot_dir(proc_root(disks)))))
        proc.start()
        try:
            yield proc
        finally:
            proc.kill9()
            assert loops_over(set(disks.devices.values())) == [], "partition views left behind"
    finally:
        disks.cleanup()


def proc_root(disks: FakeDisks) -> Path:
    return disks.root / "driver"


def snapshot_dir(root: Path) -> Path:
    return root / "snapshots"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("access", "fs_type"), [("mount", "ext4"), ("block", "ext4"), ("mount", "xfs")],
                         ids=["mount-ext4", "block", "mount-xfs"])
def test_conformance_suite_passes_on_rawdisk(rawdisk_driver: DriverProcess, access: str, fs_type: str,
                                             conformance_results: list[str]) -> None:
    staging = rawdisk_driver.kubelet_dir / "staging"
    target = rawdisk_driver.kubelet_dir / "pods"
    staging.mkdir(parents=True)
    target.mkdir(parents=True)
    args = [
        "--csi-endpoint", rawdisk_driver.endpoint,
        "--csi-staging-dir", str(staging), "--csi-target-dir", str(target),
        "--csi-access", access, "--csi-fs-type", fs_type, "--csi-volume-size", "64Mi",
    ]
    run = run_suite(args, rawdisk_driver.root / "junit.xml")
    label = f"rawdisk {access}/{fs_type}" if access == "mount" else "rawdisk block"
    conformance_results.append(f"{label}: {run.summary()}")
    conformance_results.extend(f"  FAILED {spec}" for spec in run.failed_specs)
    print(run.output)
    assert run.tests > 50, f"the suite did not run (exit {run.returncode}):\n{run.output}"
    assert run.failures == 0 and run.errors == 0, (
        f"{run.summary()}; failing specs:\n  " + "\n  ".join(run.failed_specs)
        + f"\n\n{run.output}\n\ndriver log (tail):\n{rawdisk_driver.log(8000)}"
    )
    unexpected = run.unexpected_skips(ALLOWED_SKIPS[access])
    assert not unexpected, f"skips no missing capability explains: {unexpected}\n{run.output}"
    assert rawdisk_driver.leaks()["mounts"] == []
    assert list(snapshot_dir(rawdisk_driver.root).iterdir()) == [], "snapshot images left behind"
    assert rawdisk_driver.stop() == 0
