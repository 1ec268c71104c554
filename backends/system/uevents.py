"""Kernel uevents (the kernel's netlink multicast group; there is no udevd here).

Use the context manager, which owns the socket::

    async with uevent_monitor(subsystem="block") as events:
        async for event in events:
            ...

Subscribe *before* acting (attach, resize) so no event is missed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from loguru import logger
from pyroute2.netlink.uevent import AsyncUeventSocket

#: Netlink multicast group of uevents sent by the kernel itself (1); udevd's is 2.
KERNEL_GROUP = 1


@dataclass(frozen=True)
class Uevent:
    action: str
    devpath: str
    subsystem: str
    devname: str
    devtype: str
    properties: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def device(self) -> str:
        """The device node, ``/dev/<devname>``, or "" when the event has none."""
        return f"/dev/{self.devname}" if self.devname else ""

    @classmethod
    def from_properties(cls, properties: Mapping[str, str]) -> Uevent:
        props = MappingProxyType(dict(properties))
        return cls(
            action=props.get("ACTION", ""),
            devpath=props.get("DEVPATH", ""),
            subsystem=props.get("SUBSYSTEM", ""),
            devname=props.get("DEVNAME", ""),
            devtype=props.get("DEVTYPE", ""),
            properties=props,
        )


def parse_datagram(data: bytes) -> Uevent | None:
    """A raw kernel uevent (``action@devpath\\0KEY=value\\0...``); None for anything else."""
    if data.startswith(b"libudev\0"):
        return None
    fields = data.split(b"\0")
    props: dict[str, str] = {}
    for raw in fields[1:]:
        key, sep, value = raw.decode("utf-8", "replace").partition("=")
        if sep and key:
            props[key] = value
    if "ACTION" not in props:
        return None
    return Uevent.from_properties(props)


def _from_message(message: Any) -> Uevent | None:
    props = {key: value for key, value in message.items() if isinstance(value, str) and key.isupper()}
    if "ACTION" not in props:
        return None
    return Uevent.from_properties(props)


async def _events(sock: Any, subsystem: str | None) -> AsyncGenerator[Uevent, None]:
    while True:
        async for message in sock.get():
            event = _from_message(message)
            if event is None or (subsystem is not None and event.subsystem != subsystem):
                continue
            logger.trace("uevent {action} {devpath}", action=event.action, devpath=event.devpath)
            yield event


@asynccontextmanager
async def uevent_monitor(subsystem: str | None = None) -> AsyncIterator[AsyncIterator[Uevent]]:
    """Listen to kernel uevents (optionally one subsystem) while the block runs."""
    sock = AsyncUeventSocket()
    try:
        await sock.bind(groups=KERNEL_GROUP)
        stream = _events(sock, subsystem)
        try:
            yield stream
        finally:
            await stream.aclose()
    finally:
        sock.close()


async def uevents(subsystem: str | None = None) -> AsyncIterator[Uevent]:
    """Every kernel uevent, for ever. Close it (``contextlib.aclosing``) to release the socket."""
    async with uevent_monitor(subsystem) as events:
        async for event in events:
            yield event
