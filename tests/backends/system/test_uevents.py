from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from backends.system import loop
from backends.system.uevents import Uevent, uevent_monitor
from tests.backends.system.fixtures import LoopFactory, make_image

pytestmark = [pytest.mark.anyio, pytest.mark.root]

MIB = 1 << 20


async def _next_for(events: AsyncIterator[Uevent], devname: str, actions: set[str]) -> Uevent:
    with anyio.fail_after(5):
        async for event in events:
            if event.devname == devname and event.action in actions:
                return event
    raise AssertionError("uevent stream ended")


async def test_attach_resize_and_detach_are_seen(scratch: Path, loops: LoopFactory) -> None:
    image = make_image(scratch, 16 * MIB)
    async with uevent_monitor(subsystem="block") as events:
        device = await loops(image)
        name = f"loop{device.number}"
        attached = await _next_for(events, name, {"add", "change"})
        assert attached.subsystem == "block" and attached.device == device.path
        assert attached.properties["MAJOR"] == "7"
        os.truncate(image, 32 * MIB)
        await loop.refresh_capacity(device.path)
        resized = await _next_for(events, name, {"change"})
        assert resized.devtype == "disk"
        await loop.detach(device.path)
        await _next_for(events, name, {"change", "remove"})


async def test_subsystem_filter_drops_other_events(scratch: Path, loops: LoopFactory) -> None:
    image = make_image(scratch, 16 * MIB)
    async with uevent_monitor(subsystem="no-such-subsystem") as events:
        await loops(image)
        with anyio.move_on_after(0.5) as scope:
            async for _ in events:
                raise AssertionError("an event passed the filter")
        assert scope.cancelled_caught
