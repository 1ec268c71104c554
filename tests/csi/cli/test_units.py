"""Sizes as people type and read them (csi/cli/units.py), shared by ``ctl``, ``disks`` and ``bench``."""

from __future__ import annotations

import argparse

import pytest

from csi.cli.units import human, parse_size

MIB = 1 << 20


@pytest.mark.parametrize(("text", "size"), [("1048576", 1 << 20), ("10Gi", 10 << 30), ("500M", 500 * 1000**2),
                                            ("64mi", 64 << 20), ("2GiB", 2 << 30), (" 3 Ki ", 3 << 10), ("1t", 10**12),
                                            ("1G", 10**9), ("4096", 4096)])
def test_sizes_as_people_type_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5Gi", "-1", "10Xi", "Gi", "ten", "1 Gi Gi"])
def test_what_is_not_a_size_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                            (64 * MIB, "64.0 MiB"), (1536 * MIB, "1.5 GiB"), (3 << 40, "3.0 TiB"),
                                            (5000 << 40, "5000.0 TiB")])
def test_sizes_read_as_people_write_them(size: int, text: str) -> None:
    assert human(size) == text


def test_what_is_written_reads_back() -> None:
    for size in (0, 4096, 64 * MIB, 10 << 30):
        shown = human(size)
        number, unit = shown.split()
        assert parse_size(number.removesuffix(".0") + unit.removesuffix("B")) == size
