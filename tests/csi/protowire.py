"""A tiny protobuf wire encoder and decoder, independent of betterproto2, for byte-level tests of the protocol."""

from __future__ import annotations

VARINT, LEN = 0, 2


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 goes out as ten bytes of two's complement
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def vint(number: int, value: int) -> bytes:
    return tag(number, VARINT) + varint(value)


def ld(number: int, payload: bytes | str) -> bytes:
    raw = payload.encode() if isinstance(payload, str) else payload
    return tag(number, LEN) + varint(len(raw)) + raw


def entry(number: int, key: str, value: str) -> bytes:
    """One map<string, string> entry: a nested message with key = 1, value = 2."""
    return ld(number, ld(1, key) + ld(2, value))


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def top_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Split a message into (field number, value) pairs; only varint and length-delimited."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
            fields.append((number, value))
        elif wire_type == LEN:
            size, pos = read_varint(data, pos)
            fields.append((number, data[pos : pos + size]))
            pos += size
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
    return fields


def decode_map(data: bytes, number: int) -> dict[str, str]:
    result: dict[str, str] = {}
    for field, value in top_fields(data):
        if field == number:
            assert isinstance(value, bytes)
            kv = dict(top_fields(value))
            key, val = kv.get(1, b""), kv.get(2, b"")
            assert isinstance(key, bytes)
            assert isinstance(val, bytes)
            result[key.decode()] = val.decode()
    return result
