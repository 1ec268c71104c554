"""The suite's configuration: which endpoint, where to stage and publish, what to ask for."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?)?[bB]?\s*$")
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


class AccessType(enum.Enum):
    MOUNT = "mount"
    BLOCK = "block"


@dataclass(frozen=True)
class SuiteConfig:
    """Everything a spec may need to know about the plugin under test."""

    endpoint: str
    staging_dir: Path
    target_dir: Path
    access: AccessType = AccessType.MOUNT
    fs_type: str = "ext4"
    volume_size_bytes: int = 64 * MIB
    expand_size_bytes: int = 128 * MIB
    parameters: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    node_id: str = ""
    rpc_timeout: float = 120.0


def parse_size(text: str) -> int:
    """``64Mi`` → 67108864; plain numbers are bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 67108864, 64Mi, 1Gi)")
    return int(match.group(1)) * _UNITS[match.group(2) or ""]


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` → ``{"k": "v"}``; the value may itself contain ``=``."""
    split = {item: item.partition("=") for item in items}
    for item in (item for item, (key, sep, _) in split.items() if not (sep and key)):
        raise ValueError(f"parameter must look like key=value, got {item!r}")
    return {key: value for key, _, value in split.values()}


def load_secrets(path: str) -> dict[str, str]:
    """A JSON object of string keys and values, sent as ``secrets`` on every RPC that carries them."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{path}: secrets must be a JSON object of strings")
    return dict(data)
