"""DeleteSnapshot on a full image directory: the space a snapshot holds can always be given back, crash-safely.

Before, the deletion first wrote a ``deleting`` record, which a full filesystem refused (RESOURCE_EXHAUSTED:
"no room to write metadata"), so the CO could never reclaim the space. Now the image is renamed to its
deletion mark, which needs no room, and start-up finishes a deletion a crash interrupted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from csi.gen.csi import v1 as csi
from tests.backends.loopfile.test_space_kept import block_volume, snapshot, write_device
from tests.filesystems import fill_up, free_bytes, mounted_filesystem
from tests.support import MIB, Client, DriverProcess, connect, force_cleanup

pytestmark = [pytest.mark.anyio, pytest.mark.root]


async def snapshot_with_data(c: Client, driver: DriverProcess) -> csi.Snapshot:
    vol = await block_volume(c, driver, "pvc-data", 32 * MIB)
    write_device(vol.target, 16 * MIB, 1)
    await vol.unpublish()
    await vol.unstage()
    return await snapshot(c, "snap-full", vol.volume_id)


async def snapshot_ids(c: Client) -> list[str]:
    listed = await c.controller.list_snapshots(csi.ListSnapshotsRequest())
    return [e.snapshot.snapshot_id for e in listed.entries if e.snapshot]


@pytest.mark.parametrize("crash", [False, True], ids=["full", "full-then-crash"])
async def test_delete_snapshot_on_a_full_filesystem_frees_its_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    crash: bool) -> None:
    driver = DriverProcess(tmp_path / "node")
    with mounted_filesystem("ext4", 128 * MIB, driver.data_dir):
        try:
            if crash:
                monkeypatch.setenv("LOCALCSI_FAULT", "snapshot.delete.after_mark:kill")
            driver.start()
            async with connect(driver.socket_path) as c:
                snap = await snapshot_with_data(c, driver)
                fill_up(driver.data_dir / "filler.bin")  # someone else filled the filesystem
                full = free_bytes(driver.data_dir)
                assert full < MIB
            driver.kill9()
            driver.start()  # a driver restarted on a full filesystem, too, must give the space back
            async with connect(driver.socket_path) as c:
                request = csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id)
                if crash:
                    with pytest.raises(Exception):  # noqa: B017 - the driver dies in the middle of the call
                        await c.controller.delete_snapshot(request, timeout=30)
                    assert driver.proc is not None and driver.proc.wait(30) == -9
                else:
                    await c.controller.delete_snapshot(request)
                    assert await snapshot_ids(c) == []
            monkeypatch.delenv("LOCALCSI_FAULT", raising=False)
            driver.kill9()
            driver.start()  # a restart finishes an interrupted deletion and never brings the snapshot back
            async with connect(driver.socket_path) as c:
                assert await snapshot_ids(c) == []
                await c.controller.delete_snapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
            assert sorted(p.name for p in (driver.data_dir / "snapshots").iterdir()) == []
            assert free_bytes(driver.data_dir) >= full + 16 * MIB
        finally:
            driver.kill9()
            force_cleanup(driver.root, driver.data_dir)
