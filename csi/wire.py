"""Strict check of a request's protobuf wire encoding before betterproto2 parses it.

betterproto2's parser is lenient: a field sent with the wrong wire type (a
varint where a string belongs, a group marker) or a length that runs past the
end of the message still "parses", into values of the wrong Python type that
later fail deep inside a handler (INTERNAL instead of INVALID_ARGUMENT). This
walks the encoding once, recursing into message and map fields, and raises
``ValueError`` on anything a conforming parser would reject.
"""

from __future__ import annotations

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


def _fields(data: bytes) -> list[tuple[int, int, bytes]]:
    """(field number, wire type, payload) of every field; raises on malformed framing."""
    out = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == VARINT:
            start = i
            _, i = _varint(data, i)
            out.append((number, wire, data[start:i]))
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if i + size > len(data):
                raise ValueError("truncated fixed-width field")
            out.append((number, wire, data[i:i + size]))
            i += size
        elif wire == LEN:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError(f"field {number} claims {length} bytes past the end of the message")
            out.append((number, wire, data[i:i + length]))
            i += length
        else:
            raise ValueError(f"unsupported wire type {wire} (field {number})")
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


def check(data: bytes, message_type: type[betterproto2.Message], depth: int = 0) -> None:
    """Raise ValueError unless ``data`` is a well-formed encoding of ``message_type``."""
    if depth > MAX_DEPTH:
        raise ValueError("message nested too deeply")
    proto: Any = getattr(message_type, "_betterproto")  # noqa: B009 - a classproperty mypy cannot type
    for number, wire, payload in _fields(data):
        name = proto.field_name_by_number.get(number)
        if name is None:
            continue  # unknown fields are kept, as protobuf does
        cls = proto.cls_by_field.get(name)
        _check_value(proto.meta_by_field_name[name], wire, payload, cls, depth)
