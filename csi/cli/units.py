"""Sizes as people write and read them, shared by the command-line tools."""

from __future__ import annotations

import argparse
import re

UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
         "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}


def parse_size(text: str) -> int:
    """``10Gi``, ``500M``, ``1048576`` → bytes (an argparse type: a bad value is a usage error)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]i?)?[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1Gi, 500M, 1048576)")
    return int(match.group(1)) * UNITS[(match.group(2) or "").lower()]


def human(size: int) -> str:
    """Bytes in binary units with one decimal: ``64.0 MiB``; under 1 KiB, whole bytes."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover
