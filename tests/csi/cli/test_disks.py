"""``localcsi disks`` (csi/cli/disks.py): the table, the PersistentVolumes of claimed disks, and a real inventory."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from backends.base import TOPOLOGY_KEY
from backends.rawdisk.claim import Claim, Record
from backends.rawdisk.inventory import Disk, State
from csi.cli.disks import pv_manifest, table
from tests.backends.rawdisk.support import MIB, FakeDisks, disk_states, fake_disks, make_ext4, running_driver
from tests.lifecycle import Lifecycle
from tests.support import DriverProcess, connect, localcsi, mount_cap

VOLUME_ID = "lcv-" + "a" * 32
CLAIM = Claim(VOLUME_ID, MIB, 1022 * MIB, uuid.uuid4(), Record(VOLUME_ID, "pvc-data"))
CLAIMED = Disk("/dev/localcsi/disk1", "/dev/sdb", "/dev/localcsi/*", State.CLAIMED, "holds volume pvc-data",
               1 << 30, 1022 * MIB, claim=CLAIM)
FREE = Disk("/dev/sdc", "/dev/sdc", "/dev/sd*", State.FREE, "blank and eligible", 500 * MIB, 498 * MIB)

disks = pytest.fixture(fake_disks, name="disks")


@pytest.fixture
def driver(disks: FakeDisks) -> Iterator[DriverProcess]:
    yield from running_driver(disks)


def test_the_table_has_a_row_per_disk_with_its_link_state_volume_and_reason() -> None:
    header, claimed, free = table([CLAIMED, FREE]).splitlines()
    assert header.split() == ["DEVICE", "SIZE", "STATE", "VOLUME", "REASON"]
    assert claimed.split()[:6] == ["/dev/localcsi/disk1", "(/dev/sdb)", "1.0", "GiB", "claimed", VOLUME_ID]
    assert claimed.endswith("holds volume pvc-data")
    assert free.split()[:5] == ["/dev/sdc", "500.0", "MiB", "free", "-"]
    assert header.index("STATE") == claimed.index("claimed") == free.index("free")  # columns line up


@pytest.mark.parametrize("fs_type", ["ext4", ""])
def test_a_claimed_disk_becomes_a_retained_persistent_volume_pinned_to_its_node(fs_type: str) -> None:
    pv = yaml.safe_load(pv_manifest(CLAIMED, fs_type, node="node-7", storage_class="disks", driver="localcsi.dev"))
    assert (pv["kind"], pv["metadata"]["name"]) == ("PersistentVolume", "pvc-data")
    spec = pv["spec"]
    assert spec["persistentVolumeReclaimPolicy"] == "Retain"
    assert (spec["capacity"]["storage"], spec["storageClassName"]) == (str(1022 * MIB), "disks")
    assert spec["volumeMode"] == ("Filesystem" if fs_type else "Block")
    assert spec["csi"]["volumeHandle"] == VOLUME_ID and spec["csi"].get("fsType", "") == fs_type
    assert spec["nodeAffinity"]["required"]["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": TOPOLOGY_KEY, "operator": "In", "values": ["node-7"]}]}]
    with pytest.raises(ValueError, match="holds no volume"):
        pv_manifest(FREE, "", node="node-7", storage_class="", driver="localcsi.dev")


def test_with_pools_the_table_says_each_disks_pool() -> None:
    header, claimed, free = table([CLAIMED, FREE], {CLAIMED.path: "disks"}).splitlines()
    assert header.split() == ["POOL", "DEVICE", "SIZE", "STATE", "VOLUME", "REASON"]
    assert claimed.split()[:2] == ["disks", "/dev/localcsi/disk1"] and free.split()[:2] == ["-", "/dev/sdc"]


def test_disks_takes_patterns_or_a_pools_file(tmp_path: Path) -> None:
    neither = localcsi("disks")
    assert neither.returncode == 2 and "--rawdisk-device patterns or a pools file" in neither.stderr
    bad = tmp_path / "pools.yaml"
    bad.write_text("pools:\n  d:\n    backend: rawdisk\n    disks: [/dev/sdb]\n")
    refused = localcsi("disks", "--config", str(bad))
    assert refused.returncode == 2 and "pool 'd'" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.root
def test_a_pools_files_rawdisk_pools_are_listed_with_their_pool(disks: FakeDisks, tmp_path: Path) -> None:
    disks.add("disk-0", 64 * MIB)
    config = tmp_path / "pools.yaml"
    config.write_text(f"default: files\npools:\n  files:\n    backend: loopfile\n    directory: {tmp_path}/v\n"
                      f"  whole:\n    backend: rawdisk\n    devices: [{disks.pattern!r}]\n")
    listed = json.loads(localcsi("disks", "--config", str(config), "--json", check=True).stdout)["disks"]
    assert [(d["pool"], d["path"], d["state"]) for d in listed] == [("whole", disks.link("disk-0"), "free")]


def test_pv_manifests_need_a_node() -> None:
    done = localcsi("disks", "--rawdisk-device", "/nonexistent/*", "--pv-manifests")
    assert done.returncode == 2 and "--pv-manifests needs --node" in done.stderr


@pytest.mark.root
@pytest.mark.anyio
async def test_disks_command_lists_states_reasons_and_pv_manifests(disks: FakeDisks, driver: DriverProcess) -> None:
    disks.add("free", 64 * MIB)
    disks.add("ext4", 64 * MIB, prepare=make_ext4)
    disks.add("claimed", 128 * MIB)
    driver.start()
    async with connect(driver.socket_path) as c:
        vol = Lifecycle(c, driver, "pvc-adopt", mount_cap("ext4"), 100 * MIB)
        await vol.create()
        await vol.use()  # formats the partition with ext4
        await vol.release()
    driver.stop()
    states = disk_states([disks.pattern])
    assert states["free"]["state"] == "free"
    assert states["ext4"]["state"] == "excluded" and "ext4" in str(states["ext4"]["reason"])
    assert states["claimed"]["state"] == "claimed" and states["claimed"]["volume_id"] == vol.volume_id
    assert states["claimed"]["volume_name"] == "pvc-adopt"

    table = localcsi("disks", "--rawdisk-device", disks.pattern, check=True).stdout
    assert vol.volume_id in table and "someone's data" in table

    manifests = localcsi("disks", "--rawdisk-device", disks.pattern, "--pv-manifests", "--node", "node-7",
                         "--storage-class", "local-disks", check=True).stdout
    assert f'volumeHandle: "{vol.volume_id}"' in manifests
    assert 'fsType: "ext4"' in manifests and "volumeMode: Filesystem" in manifests
    assert 'values: ["node-7"]' in manifests and 'storageClassName: "local-disks"' in manifests
    assert f'storage: "{126 * MIB}"' in manifests
