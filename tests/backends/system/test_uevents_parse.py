from __future__ import annotations

from backends.system.uevents import Uevent, parse_datagram


def test_kernel_datagram() -> None:
    data = (
        b"change@/devices/virtual/block/loop0\0ACTION=change\0DEVPATH=/devices/virtual/block/loop0\0"
        b"SUBSYSTEM=block\0DISK_MEDIA_CHANGE=1\0MAJOR=7\0MINOR=0\0DEVNAME=loop0\0DEVTYPE=disk\0SEQNUM=871\0"
    )
    event = parse_datagram(data)
    assert event is not None
    assert (event.action, event.devpath, event.subsystem, event.devname, event.devtype) == (
        "change",
        "/devices/virtual/block/loop0",
        "block",
        "loop0",
        "disk",
    )
    assert event.device == "/dev/loop0"
    assert event.properties["DISK_MEDIA_CHANGE"] == "1"


def test_udev_and_garbage_datagrams_are_ignored() -> None:
    assert parse_datagram(b"libudev\0" + b"\0" * 40) is None
    assert parse_datagram(b"hello") is None


def test_from_properties_defaults() -> None:
    event = Uevent.from_properties({"ACTION": "remove"})
    assert event.devname == "" and event.device == ""
