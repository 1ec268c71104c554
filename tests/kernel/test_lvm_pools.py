"""One driver, three pools in the kernel lane: lvm thick on one volume group, lvm thin on another's thin pool,
and loopfile, chosen by the StorageClass parameter ``localcsi.dev/pool``.

Each volume lands in its pool's storage (an LV of that VG, thin in the thin pool or not; an image file), each
GetCapacity answers for its own pool, and every volume stages, publishes and keeps its data through the one
driver; deleted, nothing is left in any of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.pools import POOL_PARAMETER
from csi.gen.csi import v1 as csi
from e2e.leaks import volume_lvs
from tests.backends.test_pools import PoolsDriver
from tests.kernel.lvmtools import VolumeGroup, volume_group
from tests.lifecycle import PAYLOAD, Lifecycle
from tests.support import MIB, assert_no_leaks, connect, create_request, mount_cap

pytestmark = [pytest.mark.kernel, pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(900)]

POOLS = """\
default: files
pools:
  files:
    backend: loopfile
    directory: {{root}}
  thick:
    backend: lvm
    vg: {thick}
  thin:
    backend: lvm
    vg: {thin}
    thinpool: {pool}
"""


async def test_thick_thin_and_loopfile_pools_in_one_driver(tmp_path: Path, lvm_vg: VolumeGroup) -> None:
    (tmp_path / "pvs").mkdir()
    (tmp_path / "driver").mkdir()
    with volume_group(tmp_path / "pvs", 1024 * MIB, 64 * MIB) as thick_vg:
        text = POOLS.format(thick=thick_vg.name, thin=lvm_vg.name, pool=lvm_vg.thinpool)
        with PoolsDriver(tmp_path / "driver", pools_file=text).running(timeout=180) as proc:  # TCG: lvm is slow
            async with connect(proc.socket_path) as c:
                capacity = {}
                for pool in ("files", "thick", "thin"):
                    reply = await c.controller.get_capacity(csi.GetCapacityRequest(parameters={POOL_PARAMETER: pool}))
                    capacity[pool] = reply.available_capacity
                # thick: the second VG's free extents (2 GiB less its 64 MiB thin pool); thin: the first VG's pool.
                assert 1024 * MIB < capacity["thick"] <= 2048 * MIB - 64 * MIB, capacity
                assert 0 < capacity["thin"] <= 2048 * MIB, capacity
                assert capacity["files"] > 0 and len(set(capacity.values())) == 3, capacity

                ids = {}
                for pool in ("files", "thick", "thin"):
                    made = await c.controller.create_volume(create_request(f"pvc-{pool}", 64 * MIB,
                                                                           parameters={POOL_PARAMETER: pool}))
                    assert made.volume is not None
                    ids[pool] = made.volume.volume_id
                assert "@" not in ids["files"] and ids["thick"].endswith("@thick") and ids["thin"].endswith("@thin")
                local = {pool: volume_id.split("@")[0] for pool, volume_id in ids.items()}
                thick_lvs, thin_lvs = volume_lvs(thick_vg.name), volume_lvs(lvm_vg.name)
                assert set(thick_lvs) == {local["thick"]} and thick_lvs[local["thick"]]["pool_lv"] == ""
                assert set(thin_lvs) == {local["thin"]} and thin_lvs[local["thin"]]["pool_lv"] == lvm_vg.thinpool
                assert (proc.data_dir / f"{local['files']}.img").exists()

                for pool, volume_id in ids.items():
                    vol = Lifecycle(c, proc, f"pvc-{pool}", mount_cap())
                    vol.volume_id = volume_id
                    await vol.use()
                    vol.write()
                    await vol.release()
                    await vol.use()
                    assert vol.read() == PAYLOAD, f"{pool}: the data did not survive unstage and stage"
                    await vol.down()
                assert volume_lvs(thick_vg.name) == {} and volume_lvs(lvm_vg.name) == {}
                assert list(proc.data_dir.glob("*.img")) == []
            assert_no_leaks(proc)
