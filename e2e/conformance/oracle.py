"""Assertions about gRPC outcomes: the spec's error tables are the oracle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

T = TypeVar("T")


async def expect_code(
    call: Awaitable[T],
    *allowed: Status,
    on_success: Callable[[T], Awaitable[None]] | None = None,
) -> GRPCError:
    """Await ``call`` and require it to fail with one of ``allowed``.

    ``on_success`` lets a caller register whatever an unexpectedly successful
    call created, so the tracker still cleans it up before the spec fails.
    """
    try:
        reply = await call
    except GRPCError as exc:
        names = " or ".join(code.name for code in allowed)
        assert exc.status in allowed, f"expected {names}, got {exc.status.name}: {exc.message}"
        return exc
    if on_success is not None:
        await on_success(reply)
    names = " or ".join(code.name for code in allowed)
    pytest.fail(f"expected {names}, but the call succeeded: {reply!r}")
