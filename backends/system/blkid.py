"""Does a device hold anything? ``blkid -p -o export`` (low-level probe, no cache).

Only a clean "nothing found" is blank: exit status 2 with no output and no
error message. Everything else is "not blank" or an error:

* exit 0 with any key at all (a filesystem, a partition table, LVM, RAID,
  LUKS, swap, ...): not blank;
* exit 8 or "ambivalent" in stderr (several signatures): ambiguous, never blank;
* exit 2 *with* an error message (e.g. the device cannot be opened): an error,
  because "could not look" is not "found nothing".

Known limit, shown in the golden files: a signature that blkid no longer
recognises (an XFS whose primary superblock was zeroed) probes blank; only
data that some signature still marks is protected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from loguru import logger

from backends.system.errors import CommandError
from backends.system.runner import Result, Runner

BLKID = "blkid"
PROBE_TIMEOUT = 30.0

_EXIT_FOUND = 0
_EXIT_NOTHING = 2
_EXIT_AMBIVALENT = 8

_ESCAPE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: m.group(1), value)


def parse_export(text: str) -> dict[str, str]:
    """``KEY=value`` lines as written by ``blkid -o export`` (values are backslash-escaped)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = _unescape(value)
    return values


@dataclass(frozen=True)
class Probe:
    blank: bool
    fs_type: str
    usage: str
    pt_type: str
    ambiguous: bool
    raw: Mapping[str, str]

    @property
    def description(self) -> str:
        """Human words for what was found, for error messages."""
        if self.blank:
            return "nothing (blank)"
        if self.ambiguous:
            return "several conflicting signatures (ambiguous probe)"
        parts: list[str] = []
        if self.fs_type:
            parts.append(f"{self.fs_type} ({self.usage or 'unknown usage'})")
        if self.pt_type:
            parts.append(f"a {self.pt_type} partition table")
        if not parts:
            keys = ", ".join(sorted(k for k in self.raw if k != "DEVNAME"))
            parts.append(f"unidentified data (blkid keys: {keys or 'none'})")
        return " and ".join(parts)

    @classmethod
    def from_result(cls, result: Result) -> Probe:
        raw = parse_export(result.stdout)
        raw.pop("DEVNAME", None)
        stderr = result.stderr.strip()
        ambiguous = result.returncode == _EXIT_AMBIVALENT or "ambivalent" in stderr.lower()
        if ambiguous:
            return cls(False, raw.get("TYPE", ""), raw.get("USAGE", ""), raw.get("PTTYPE", ""), True, _frozen(raw))
        if result.returncode == _EXIT_NOTHING and not raw and not stderr:
            return cls(True, "", "", "", False, _frozen(raw))
        if result.returncode == _EXIT_FOUND and raw:
            return cls(False, raw.get("TYPE", ""), raw.get("USAGE", ""), raw.get("PTTYPE", ""), False, _frozen(raw))
        # Exit 2 with an error message, 0 without output, 4 (usage), anything else:
        # we could not tell what is there.
        raise CommandError(result.argv, result.returncode, stderr or "blkid gave no usable answer")


def _frozen(values: dict[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(values))


async def probe(runner: Runner, device: str) -> Probe:
    """Low-level probe of ``device`` for filesystems, partition tables and other signatures."""
    result = await runner.run([BLKID, "-p", "-o", "export", device], timeout=PROBE_TIMEOUT, check=False)
    found = Probe.from_result(result)
    logger.trace("probe {dev}: {what}", dev=device, what=found.description)
    return found
