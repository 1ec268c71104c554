"""Our GPT writer and reader, checked against util-linux's sfdisk in both directions (image files, no root)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from backends.system import gpt
from tests.backends.system.fixtures import LoopFactory

MIB = 1 << 20
TYPE = uuid.UUID("c3ba621b-6086-40bf-945a-c109bf7cf0c5")
NAME = "lcv-0123456789abcdef0123456789abcdef"


def write_image(path: Path, layout: gpt.Layout, image: gpt.Image) -> None:
    with path.open("wb") as handle:
        handle.truncate(layout.disk_bytes)
        handle.write(image.head)
        handle.seek(image.tail_offset)
        handle.write(image.tail)


def sfdisk(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["sfdisk", *args], capture_output=True, text=True, check=True, input=stdin,
                          timeout=60).stdout


def check_with_sfdisk(device: str, layout: gpt.Layout) -> None:
    sector = layout.sector
    table = json.loads(sfdisk("--json", device))["partitiontable"]
    assert table["label"] == "gpt" and table["sectorsize"] == sector
    [part] = table["partitions"]
    assert uuid.UUID(part["type"]) == TYPE and part["name"] == NAME
    assert part["start"] * sector == MIB
    assert part["size"] * sector == layout.partition_bytes
    assert (part["start"] + part["size"]) * sector % MIB == 0
    assert "No errors detected" in sfdisk("--verify", device)


@pytest.mark.parametrize("size", [64 * MIB, 100 * MIB + 512])
def test_sfdisk_reads_and_verifies_what_we_write(tmp_path: Path, size: int) -> None:
    layout = gpt.Layout(size, 512)
    path = tmp_path / "disk.img"
    write_image(path, layout, gpt.build(layout, type_guid=TYPE, name=NAME))
    check_with_sfdisk(str(path), layout)


@pytest.mark.root
@pytest.mark.anyio
async def test_4k_sector_disk(scratch: Path, loops: LoopFactory) -> None:
    """sfdisk knows a 4 KiB-sector disk only from the device itself: a loop device with 4 KiB blocks."""
    layout = gpt.Layout(256 * MIB, 4096)
    path = scratch / "disk.img"
    write_image(path, layout, gpt.build(layout, type_guid=TYPE, name=NAME))
    device = await loops(path, block_size=4096)
    check_with_sfdisk(device.path, layout)
    head = gpt.read_at(device.path, 0, MIB)
    [part] = gpt.parse_primary(head, 4096).partitions
    assert part.first_lba == MIB // 4096


def test_we_read_what_sfdisk_writes(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    with path.open("wb") as handle:
        handle.truncate(64 * MIB)
    sfdisk("--quiet", str(path), stdin=f"label: gpt\nstart=2048, size=4096, type={TYPE}, name={NAME}\n,\n")
    table = gpt.parse_primary(path.read_bytes()[: MIB], 512)
    first, second = table.partitions
    assert (first.type_guid, first.name, first.first_lba, first.last_lba) == (TYPE, NAME, 2048, 6143)
    assert second.number == 2 and second.type_guid != TYPE
    assert table.byte_range(first) == (MIB, 2 * MIB)


def test_parse_round_trip_and_layout() -> None:
    layout = gpt.Layout(64 * MIB, 512)
    disk_guid, part_guid = uuid.uuid4(), uuid.uuid4()
    image = gpt.build(layout, type_guid=TYPE, name=NAME, disk_guid=disk_guid, unique_guid=part_guid)
    assert len(image.head) == layout.head_bytes == 34 * 512
    assert image.tail_offset + len(image.tail) == layout.disk_bytes
    table = gpt.parse_primary(image.head, 512)
    assert table.disk_guid == disk_guid
    assert table.alternate_lba == layout.last_lba
    [part] = table.partitions
    assert (part.unique_guid, part.name, part.number) == (part_guid, NAME, 1)
    assert layout.partition_bytes == 62 * MIB
    backup = gpt.parse_header(image.tail[-512:])
    assert backup is not None and backup[5] == layout.last_lba and backup[6] == 1


@pytest.mark.parametrize(("offset", "message"), [
    (510, "no protective MBR"),
    (512 + 100 - 100 + 8, "no valid primary GPT header"),  # a header field, so the header CRC breaks
    (1024 + 40, "partition entry array CRC mismatch"),
])
def test_damage_is_detected(offset: int, message: str) -> None:
    head = bytearray(gpt.build(gpt.Layout(64 * MIB, 512), type_guid=TYPE, name=NAME).head)
    head[offset] ^= 0xFF
    with pytest.raises(gpt.GptError, match=message):
        gpt.parse_primary(bytes(head), 512)


def test_refusals() -> None:
    with pytest.raises(gpt.GptError, match="too small"):
        gpt.build(gpt.Layout(MIB, 512), type_guid=TYPE, name=NAME)
    with pytest.raises(gpt.GptError, match="longer than 36"):
        gpt.build(gpt.Layout(64 * MIB, 512), type_guid=TYPE, name="x" * 37)
    with pytest.raises(gpt.GptError, match="no protective MBR"):
        gpt.parse_primary(bytes(34 * 512), 512)
