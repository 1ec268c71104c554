"""Strict check of a request's protobuf wire encoding before betterproto2 parses it.

betterproto2's parser is lenient: a field sent with the wrong wire type (a
varint where a string belongs, a group marker) or a length that runs past the
end of the message still "parses", into values of the wrong Python type that
later fail deep inside a handler (INTERNAL instead of INVALID_ARGUMENT). This
walks the encoding once, recursing into message and map fields, and raises
``ValueError`` on anything a conforming parser would reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import betterproto2

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
_WIRE_OF: dict[str, int] = {
    **dict.fromkeys(("int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "enum"), VARINT),
    **dict.fromkeys(("fixed64", "sfixed64", "double"), FIXED64),
    **dict.fromkeys(("fixed32", "sfixed32", "float"), FIXED32),
    **dict.fromkeys(("string", "bytes", "message", "map"), LEN),
}
MAX_DEPTH = 32


def _varint(data: bytes, i: int) -> tuple[int, int]:
    if i < len(data) and data[i] < 0x80:  # one-byte varints (tags, small numbers) are the common case
        return data[i], i + 1
    value = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def _field_end(data: bytes, number: int, wire: int, i: int) -> tuple[int, int]:
    """(payload start, payload end) of the field whose key ended at ``i``; raises on malformed framing."""
    if wire == VARINT:
        return i, _varint(data, i)[1]
    if wire in (FIXED64, FIXED32):
        end = i + (8 if wire == FIXED64 else 4)
        if end > len(data):
            raise ValueError("truncated fixed-width field")
        return i, end
    if wire == LEN:
        length, i = _varint(data, i)
        if i + length > len(data):
            raise ValueError(f"field {number} claims {length} bytes past the end of the message")
        return i, i + length
    raise ValueError(f"unsupported wire type {wire} (field {number})")


def _fields(data: bytes) -> list[tuple[int, int, bytes]]:
    """(field number, wire type, payload) of every field; raises on malformed framing."""
    out = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        start, i = _field_end(data, number, wire, i)
        out.append((number, wire, data[start:i]))
    return out


def _check_value(meta: Any, wire: int, payload: bytes, cls: type | None, depth: int) -> None:
    expected = _WIRE_OF.get(meta.proto_type)
    packed = meta.repeated and wire == LEN and expected in (VARINT, FIXED32, FIXED64)
    if expected is not None and wire != expected and not packed:
        raise ValueError(f"field {meta.number} ({meta.proto_type}) arrived with wire type {wire}")
    if meta.proto_type == "string":
        payload.decode("utf-8")
    elif meta.proto_type == "message" and isinstance(cls, type) and issubclass(cls, betterproto2.Message):
        check(payload, cls, depth + 1)
    elif meta.proto_type == "map":
        for number, entry_wire, entry in _fields(payload):
            if number in (1, 2):
                _check_value(meta.map_meta[number - 1], entry_wire, entry, None, depth + 1)


@dataclass(frozen=True, slots=True)
class _Field:
    """What the check needs to know about one field of a message type, looked up once per type."""

    meta: Any
    expected_wire: int | None
    packable: bool
    kind: str  # "string", "message" (a betterproto2 message class), "map" or "" (nothing to look into)
    cls: type | None


_PLANS: dict[type, dict[int, _Field]] = {}


def _plan(message_type: type[betterproto2.Message]) -> dict[int, _Field]:
    plan = _PLANS.get(message_type)
    if plan is not None:
        return plan
    proto: Any = getattr(message_type, "_betterproto")  # noqa: B009 - a classproperty mypy cannot type
    plan = {}
    for number, name in proto.field_name_by_number.items():
        meta = proto.meta_by_field_name[name]
        cls = proto.cls_by_field.get(name)
        expected = _WIRE_OF.get(meta.proto_type)
        kind = meta.proto_type if meta.proto_type in ("string", "map") else ""
        if meta.proto_type == "message" and isinstance(cls, type) and issubclass(cls, betterproto2.Message):
            kind = "message"
        plan[number] = _Field(meta, expected, bool(meta.repeated) and expected in (VARINT, FIXED32, FIXED64),
                              kind, cls)
    _PLANS[message_type] = plan
    return plan


def check(data: bytes, message_type: type[betterproto2.Message], depth: int = 0) -> None:
    """Raise ValueError unless ``data`` is a well-formed encoding of ``message_type``."""
    if depth > MAX_DEPTH:
        raise ValueError("message nested too deeply")
    plan = _plan(message_type)
    i, size = 0, len(data)
    while i < size:
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        start, i = _field_end(data, number, wire, i)
        field = plan.get(number)
        if field is None:
            continue  # unknown fields are kept, as protobuf does
        if field.expected_wire is not None and wire != field.expected_wire and not (field.packable and wire == LEN):
            raise ValueError(f"field {number} ({field.meta.proto_type}) arrived with wire type {wire}")
        if field.kind == "string":
            data[start:i].decode("utf-8")
        elif field.kind == "message":
            check(data[start:i], field.cls, depth + 1)  # type: ignore[arg-type]
        elif field.kind == "map":
            _check_value(field.meta, wire, data[start:i], None, depth)
