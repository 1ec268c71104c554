"""The rawdisk decisions without a disk: eligibility rules, ownership marks, the on-disk record, best fit."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from backends import errors
from backends.rawdisk import claim as rawdisk_claim
from backends.rawdisk.backend import pick_disk
from backends.rawdisk.inventory import Disk, State, classify
from backends.system import blkid, gpt
from backends.system.disks import DiskFacts, Match
from backends.system.runner import Result

MIB = 1 << 20
VOLUME_ID = "lcv-0123456789abcdef0123456789abcdef"
MATCH = Match("/dev/vd*", "/dev/vdb", "/dev/vdb")
HEALTHY = DiskFacts("/dev/vdb", "vdb", exists=True, is_block=True, major_minor="254:16", size_bytes=1024 * MIB)


def probe(code: int, stdout: str = "", stderr: str = "") -> blkid.Probe:
    return blkid.Probe.from_result(Result(("blkid",), code, stdout, stderr, 0.0))


BLANK = probe(2)
EXT4 = probe(0, "TYPE=ext4\nUSAGE=filesystem\n")
LVM = probe(0, "TYPE=LVM2_member\nUSAGE=raid\n")
RAID = probe(0, "TYPE=linux_raid_member\nUSAGE=raid\n")
DOS = probe(0, "PTTYPE=dos\n")


def claim_reading(volume_id: str = VOLUME_ID) -> rawdisk_claim.Reading:
    return rawdisk_claim.Reading(claim=rawdisk_claim.Claim(volume_id, MIB, 1022 * MIB, uuid.uuid4()))


@pytest.mark.parametrize(("facts", "reading", "found", "reason"), [
    (DiskFacts("/dev/vdb", "vdb", exists=False), None, None, "does not exist"),
    (DiskFacts("/dev/vdb", "vdb", exists=True), None, None, "is not a block device"),
    (replace(HEALTHY, is_partition=True), None, None, "is a partition, not a whole disk"),
    (replace(HEALTHY, stacked="dm"), None, None, "is a device-mapper device, not a whole disk"),
    (replace(HEALTHY, stacked="md"), None, None, "is an md RAID device, not a whole disk"),
    (replace(HEALTHY, loop_backing="/dev/sdb"), None, None, "is a loop device over /dev/sdb (a partition view), "
     "not a disk"),
    (replace(HEALTHY, size_bytes=0), None, None, "has no media (size 0)"),
    (replace(HEALTHY, readonly=True), rawdisk_claim.Reading(), BLANK, "is read-only"),
    (replace(HEALTHY, swap=True), rawdisk_claim.Reading(), BLANK, "is in use as swap"),
    (replace(HEALTHY, mount_points=("/a", "/b")), rawdisk_claim.Reading(), EXT4, "is mounted at /a, /b"),
    (replace(HEALTHY, holders=("dm-0",)), rawdisk_claim.Reading(), LVM,
     "is held by dm-0 (device-mapper, md or another stacking driver)"),
    (replace(HEALTHY, partition_holders=("md127",)), rawdisk_claim.Reading(), DOS,
     "has partitions held by md127"),
    (replace(HEALTHY, size_bytes=16 * MIB), rawdisk_claim.Reading(), BLANK,
     f"is too small: a volume would get {14 * MIB} bytes, at least {32 * MIB} are needed"),
    (HEALTHY, None, None, "could not be read"),
    (HEALTHY, rawdisk_claim.Reading(foreign="a GPT partition table that localcsi did not write"), None,
     "carries a GPT partition table that localcsi did not write: someone's data, never touched"),
    (HEALTHY, rawdisk_claim.Reading(), None, "could not be probed for signatures"),
    (HEALTHY, rawdisk_claim.Reading(), EXT4, "carries ext4 (filesystem): someone's data, never touched"),
    (HEALTHY, rawdisk_claim.Reading(), LVM, "carries LVM2_member (raid): someone's data, never touched"),
    (HEALTHY, rawdisk_claim.Reading(), RAID, "carries linux_raid_member (raid): someone's data, never touched"),
    (HEALTHY, rawdisk_claim.Reading(), DOS, "carries a dos partition table: someone's data, never touched"),
    (HEALTHY, rawdisk_claim.Reading(), probe(8, "", "ambivalent result"),
     "carries several conflicting signatures (ambiguous probe): someone's data, never touched"),
])
def test_every_exclusion_has_a_reason(facts: DiskFacts, reading: rawdisk_claim.Reading | None,
                                      found: blkid.Probe | None, reason: str) -> None:
    disk = classify(MATCH, facts, reading, found)
    assert (disk.state, disk.reason) == (State.EXCLUDED, reason)


def test_free_and_claimed() -> None:
    free = classify(MATCH, HEALTHY, rawdisk_claim.Reading(), BLANK)
    assert (free.state, free.capacity_bytes) == (State.FREE, 1022 * MIB)
    # Our claim wins over usage facts: a claimed disk whose partition is mounted is still ours.
    claimed = classify(MATCH, replace(HEALTHY, mount_points=("/staging",)), claim_reading(), None)
    assert (claimed.state, claimed.volume_id, claimed.capacity_bytes) == (State.CLAIMED, VOLUME_ID, 1022 * MIB)
    # ...but never over structure: a claim seen through a partition is not a disk.
    assert classify(MATCH, replace(HEALTHY, is_partition=True), claim_reading(), None).state is State.EXCLUDED


def head_with(layout: gpt.Layout, *, type_guid: uuid.UUID = rawdisk_claim.PARTITION_TYPE, name: str = VOLUME_ID,
              record: bytes | None = None) -> bytes:
    image = gpt.build(layout, type_guid=type_guid, name=name)
    head = bytearray(MIB)
    head[: len(image.head)] = image.head
    if record is not None:
        head[rawdisk_claim.RECORD_OFFSET: rawdisk_claim.RECORD_OFFSET + len(record)] = record
    return bytes(head)


def test_ownership_is_read_from_the_gpt() -> None:
    layout = gpt.Layout(64 * MIB, 512)
    record = rawdisk_claim.Record(VOLUME_ID, "pvc-1", "2025-01-01T00:00:00+00:00", ("node-a",))
    reading = rawdisk_claim.interpret(head_with(layout, record=rawdisk_claim.encode_record(record)), 512,
                                      layout.disk_bytes)
    assert reading.claim is not None and reading.claim.record == record
    assert (reading.claim.partition_offset, reading.claim.partition_bytes) == (MIB, 62 * MIB)

    assert rawdisk_claim.interpret(bytes(MIB), 512, layout.disk_bytes) == rawdisk_claim.Reading()
    other = rawdisk_claim.interpret(head_with(layout, type_guid=uuid.uuid4()), 512, layout.disk_bytes)
    assert other.claim is None and "did not write" in other.foreign
    bad_name = rawdisk_claim.interpret(head_with(layout, name="data"), 512, layout.disk_bytes)
    assert bad_name.claim is None and "malformed name" in bad_name.foreign
    smaller = rawdisk_claim.interpret(head_with(layout), 512, 32 * MIB)  # the disk shrank under the table
    assert smaller.claim is None and "outside" in smaller.foreign


def test_a_damaged_record_keeps_the_claim() -> None:
    layout = gpt.Layout(64 * MIB, 512)
    raw = bytearray(rawdisk_claim.encode_record(rawdisk_claim.Record(VOLUME_ID, "pvc-1")))
    raw[40] ^= 0xFF
    reading = rawdisk_claim.interpret(head_with(layout, record=bytes(raw)), 512, layout.disk_bytes)
    assert reading.claim is not None
    assert reading.claim.record == rawdisk_claim.Record(VOLUME_ID)  # name and publications unknown
    # A record left by another volume (the disk was re-claimed) is not trusted either.
    stale = rawdisk_claim.encode_record(rawdisk_claim.Record("lcv-" + "f" * 32, "pvc-old"))
    reading = rawdisk_claim.interpret(head_with(layout, record=stale), 512, layout.disk_bytes)
    assert reading.claim is not None and reading.claim.record.name == ""


def test_record_round_trip_and_limits() -> None:
    record = rawdisk_claim.Record(VOLUME_ID, "pvc-ü", "now", ("a", "b"))
    raw = rawdisk_claim.encode_record(record)
    assert len(raw) == rawdisk_claim.RECORD_BYTES
    assert rawdisk_claim.decode_record(raw) == record
    assert rawdisk_claim.decode_record(bytes(4096)) is None
    with pytest.raises(ValueError, match="does not fit"):
        rawdisk_claim.encode_record(rawdisk_claim.Record(VOLUME_ID, "x" * 5000))


def free_disk(name: str, capacity: int) -> Disk:
    return Disk(f"/dev/{name}", f"/dev/{name}", "/dev/*", State.FREE, "", capacity + 2 * MIB, capacity)


def test_best_fit() -> None:
    pool = [free_disk("a", 500), free_disk("b", 100), free_disk("c", 300), free_disk("d", 100)]
    assert pick_disk(pool, 1, 0).path == "/dev/b"  # smallest; ties go to allow-list order
    assert pick_disk(pool, 101, 0).path == "/dev/c"
    assert pick_disk(pool, 101, 400).path == "/dev/c"
    assert pick_disk(pool, 301, 0).path == "/dev/a"
    with pytest.raises(errors.OutOfRange, match="larger than the limit"):
        pick_disk(pool, 101, 200)
    with pytest.raises(errors.CapacityExhausted, match="largest 500 bytes"):
        pick_disk(pool, 501, 0)
    with pytest.raises(errors.CapacityExhausted, match="0 free"):
        pick_disk([], 1, 0)
