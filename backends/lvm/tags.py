"""How the ``lvm`` backend keeps a volume's state: in the LV's name and tags, nowhere else.

The LV name *is* the volume (or snapshot) id. Tags carry the rest (see :mod:`backends.lvm.backend` for the
list); a value LVM tags cannot hold is stored hex-encoded under ``<key>.hex=``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from loguru import logger

from backends.base import Condition, ContentSource, Snapshot, SourceKind, Volume, is_snapshot_id, is_volume_id
from backends.provisioning import CONTEXT_BACKEND, CONTEXT_PROVISIONING
from backends.system.lvm import LogicalVolume

TAG_OWNER = "localcsi.dev/owner=localcsi"
TAG_FORMAT = "localcsi.dev/format=1"
TAG_NAME = "localcsi.dev/name"
TAG_PUBLISHED = "localcsi.dev/published"
TAG_READONLY = "localcsi.dev/published-ro"
TAG_CONTENT_SOURCE = "localcsi.dev/content-source"
TAG_SNAPSHOT_NAME = "localcsi.dev/snapshot-name"
TAG_SOURCE_VOLUME = "localcsi.dev/source-volume"
TAG_CREATED = "localcsi.dev/created"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLAIN = re.compile(r"^[A-Za-z0-9_+.\-:]{1,900}$")


def encode_tag(key: str, value: str) -> str:
    """``key=value`` when LVM can hold ``value`` as it is, else ``key.hex=<hex>``."""
    if _PLAIN.match(value):
        return f"{key}={value}"
    return f"{key}.hex={value.encode().hex()}"


def decode_tags(tags: Iterable[str], key: str) -> list[str]:
    values = []
    for tag in tags:
        if tag.startswith(f"{key}="):
            values.append(tag[len(key) + 1 :])
        elif tag.startswith(f"{key}.hex="):
            try:
                values.append(bytes.fromhex(tag[len(key) + 5 :]).decode())
            except ValueError:
                logger.warning("ignoring malformed LV tag {tag!r}", tag=tag)
    return values


def owned(lv: LogicalVolume) -> bool:
    return TAG_OWNER in lv.tags and is_volume_id(lv.name) and not lv.hidden


def owned_snapshot(lv: LogicalVolume) -> bool:
    return TAG_OWNER in lv.tags and is_snapshot_id(lv.name) and not lv.hidden


def content_source_of(lv: LogicalVolume) -> ContentSource | None:
    for value in decode_tags(lv.tags, TAG_CONTENT_SOURCE):
        kind, _, source_id = value.partition(":")
        with contextlib.suppress(ValueError):
            return ContentSource(SourceKind(kind), source_id)
    return None


def source_tag(source: ContentSource) -> str:
    return encode_tag(TAG_CONTENT_SOURCE, f"{source.kind.value}:{source.source_id}")


def to_snapshot(lv: LogicalVolume) -> Snapshot:
    names = decode_tags(lv.tags, TAG_SNAPSHOT_NAME)
    sources = decode_tags(lv.tags, TAG_SOURCE_VOLUME)
    created = EPOCH
    for value in decode_tags(lv.tags, TAG_CREATED):
        with contextlib.suppress(ValueError):
            created = datetime.fromisoformat(value)
    return Snapshot(
        snapshot_id=lv.name,
        name=names[0] if names else "",
        source_volume_id=sources[0] if sources else "",
        size_bytes=lv.size_bytes,
        creation_time=created,
    )


def condition_of(lv: LogicalVolume, pool: LogicalVolume | None) -> Condition:
    problem = lv.problem()
    if problem is None and lv.thin and pool is not None:
        pool_problem = pool.problem()
        if pool_problem:
            problem = f"thin pool {pool.name}: {pool_problem}"
    if problem:
        return Condition(abnormal=True, message=problem)
    return Condition(message="volume is healthy" if lv.active else "volume is healthy (inactive)")


def to_volume(lv: LogicalVolume, condition: Condition | None = None) -> Volume:
    names = decode_tags(lv.tags, TAG_NAME)
    return Volume(
        volume_id=lv.name,
        name=names[0] if names else "",
        capacity_bytes=lv.size_bytes,
        context={CONTEXT_BACKEND: "lvm", CONTEXT_PROVISIONING: "thin" if lv.thin else "thick"},
        source=content_source_of(lv),
        published_node_ids=tuple(sorted(decode_tags(lv.tags, TAG_PUBLISHED))),
        condition=condition or condition_of(lv, None),
    )
