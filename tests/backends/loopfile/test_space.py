"""The loopfile space rules as pure functions: what each volume is owed, what each operation costs."""

from __future__ import annotations

import anyio
import pytest

from backends import errors
from backends.loopfile import space
from backends.reservations import Reservations

MIB = 1 << 20


def use(capacity: int, allocated: int, shared: int = 0, *, thin: bool = False, present: bool = True) -> space.ImageUse:
    return space.ImageUse(capacity * MIB, capacity * MIB if present else 0, allocated * MIB, shared * MIB, thin,
                          present)


def test_each_volume_is_owed_its_holes_and_its_shared_blocks() -> None:
    assert space.promised_bytes(use(100, 100), 1.0) == 0                 # a thick volume, all allocated
    assert space.promised_bytes(use(100, 84), 1.0) == 16 * MIB           # a thick volume a discard punched
    assert space.promised_bytes(use(100, 100, 100), 1.0) == 100 * MIB    # shared with its snapshot: CoW
    assert space.promised_bytes(use(100, 10, thin=True), 1.0) == 90 * MIB
    assert space.promised_bytes(use(100, 10, thin=True), 3.0) == 30 * MIB  # overcommit divides thin promises
    assert space.promised_bytes(use(100, 10), 3.0) == 90 * MIB             # ... never thick ones
    assert space.promised_bytes(use(100, 0, present=False), 1.0) == 0      # no image: nothing can be written


def test_available_is_free_less_every_promise_in_whole_mib() -> None:
    uses = [use(100, 100, 100), use(50, 10, thin=True)]
    # 140 MiB promised, 1 MiB kept for the records, the rest rounded down to whole MiB.
    assert space.available_bytes(500 * MIB + 12345, uses, 1.0) == 359 * MIB
    assert space.available_bytes(100 * MIB, uses, 1.0) == 0
    # An empty filesystem of exactly 256 MiB offers 255: a volume of all of it still gets its record written.
    assert space.available_bytes(256 * MIB, [], 1.0) == 255 * MIB


def test_operations_cost_what_they_will_take() -> None:
    assert space.volume_cost(64 * MIB, False, 2.0) == 64 * MIB
    assert space.volume_cost(64 * MIB, True, 2.0) == 32 * MIB
    assert space.snapshot_cost(48 * MIB) == 48 * MIB
    # A thick restore is all allocated; a thin one owes its copied data in full and the rest at the ratio.
    assert space.copy_cost(128 * MIB, 48 * MIB, False, 2.0, shares_live_volume=False) == 128 * MIB
    assert space.copy_cost(128 * MIB, 48 * MIB, True, 2.0, shares_live_volume=False) == 88 * MIB
    # A reflink clone of a live volume also makes the source's blocks shared.
    assert space.copy_cost(128 * MIB, 48 * MIB, False, 1.0, shares_live_volume=True) == 176 * MIB


def test_a_volume_is_short_of_space_when_the_filesystem_cannot_back_its_writes() -> None:
    assert space.short_of_space(use(100, 10, thin=True), 50 * MIB, 1.0)
    assert not space.short_of_space(use(100, 10, thin=True), 90 * MIB, 1.0)
    # Overcommitted thin volumes are short only once the filesystem is (nearly) full.
    assert not space.short_of_space(use(100, 10, thin=True), 50 * MIB, 2.0)
    assert space.short_of_space(use(100, 10, thin=True), 8 * MIB, 2.0)
    assert space.short_of_space(use(100, 100, 100), 50 * MIB, 2.0)  # a shared thick volume: always in full
    assert not space.short_of_space(use(100, 100), 0, 1.0)          # nothing left to allocate


@pytest.mark.anyio
async def test_reservations_admit_against_what_earlier_admissions_still_hold() -> None:
    free = [100 * MIB]

    async def measure() -> int:
        return free[0]

    reservations = Reservations(measure)
    async with reservations.hold(60 * MIB, "the first"):
        assert await reservations.available() == 40 * MIB
        with pytest.raises(errors.CapacityExhausted, match="the second needs"):
            async with reservations.hold(60 * MIB, "the second"):
                pass
        async with reservations.hold(40 * MIB, "the third"):
            assert await reservations.available() == 0
    assert reservations.held_bytes == 0
    with anyio.CancelScope() as scope:  # cancelled in the body: the hold is given back
        async with reservations.hold(10 * MIB, "cancelled"):
            scope.cancel()
            await anyio.sleep(1)
    assert reservations.held_bytes == 0
