"""Per-key locks (csi/locks.py): a busy key answers Busy at once, never queues, and every key is released."""

from __future__ import annotations

import pytest

from backends.errors import Busy
from csi.errors import status_for
from csi.locks import KeyLocks


def test_a_busy_key_raises_busy_naming_it() -> None:
    locks = KeyLocks()
    with locks.hold("lcv-a"):
        assert locks.busy("lcv-a")
        with pytest.raises(Busy, match="lcv-a is already in progress") as caught, locks.hold("lcv-a"):
            pass  # pragma: no cover - never entered
        assert status_for(caught.value).name == "ABORTED"
        with locks.hold("lcv-b"):  # another key is free: no global lock
            assert locks.busy("lcv-a") and locks.busy("lcv-b")
    assert not locks.busy("lcv-a") and not locks.busy("lcv-b")


def test_several_keys_are_taken_together_or_not_at_all() -> None:
    locks = KeyLocks()
    with locks.hold("lcs-snap"):
        with pytest.raises(Busy, match="lcs-snap"), locks.hold("lcv-new", "lcs-snap"):
            pass  # pragma: no cover - never entered
        assert not locks.busy("lcv-new"), "a refused hold takes none of its keys"
    with locks.hold("lcv-new", "lcs-snap"):
        assert locks.busy("lcv-new") and locks.busy("lcs-snap")
    assert not locks.busy("lcv-new") and not locks.busy("lcs-snap")


def test_an_exception_inside_releases_every_key() -> None:
    locks = KeyLocks()
    with pytest.raises(RuntimeError), locks.hold("lcv-a", "lcv-b"):
        raise RuntimeError("mkfs failed")
    assert not locks.busy("lcv-a") and not locks.busy("lcv-b")
    with locks.hold("lcv-a", "lcv-b"):  # and they can be taken again
        pass


def test_empty_and_repeated_keys_are_ignored_and_holding_is_not_reentrant() -> None:
    locks = KeyLocks()
    with locks.hold("lcv-a", "", "lcv-a"):  # a create without a source passes "" for it
        assert locks.busy("lcv-a") and not locks.busy("")
        with pytest.raises(Busy), locks.hold("lcv-a"):
            pass  # pragma: no cover - never entered
    assert not locks.busy("lcv-a")
