"""The per-RPC wrapper: log context, timing, one outcome line, error mapping, untearable mutations.

Every servicer method is decorated with :func:`rpc`. The wrapper

* binds ``rpc``, ``request_id`` and ``volume_id`` to every log line of the call
  (``logger.contextualize``), logs the request at DEBUG with secrets replaced by
  their count, and one INFO line with the outcome and duration;
* maps every exception through :mod:`csi.errors` so nothing reaches the client
  as UNKNOWN;
* runs *mutating* calls in a server-owned task group (:class:`Supervisor`): when
  grpclib cancels the handler because the client's deadline expired, the
  mutation (mkfs, loop attach, image creation) still runs to the end while
  holding its per-volume lock, so the CO's retry gets ABORTED until it is done
  and then finds the work finished, never half of it.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import anyio
import betterproto2
from anyio.abc import TaskGroup
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from loguru import logger

from csi.errors import to_grpc_error

Req = TypeVar("Req", bound=betterproto2.Message)
Resp = TypeVar("Resp", bound=betterproto2.Message)
T = TypeVar("T")

_request_ids = itertools.count(1)


class Observer(Protocol):
    """Receives one call per finished RPC (metrics hang here)."""

    def rpc_finished(self, rpc: str, status: Status, seconds: float) -> None: ...


class Supervisor:
    """Owns the task group in which mutations run to completion regardless of their caller."""

    def __init__(self) -> None:
        self._tg: TaskGroup | None = None
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()

    def bind(self, tg: TaskGroup | None) -> None:
        self._tg = tg

    @property
    def active(self) -> int:
        """Calls and detached mutations still running."""
        return self._active

    @contextmanager
    def track(self) -> Iterator[None]:
        if self._active == 0:
            self._idle = anyio.Event()
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def idle(self) -> None:
        """Return once nothing is running."""
        await self._idle.wait()

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` in the server's task group and wait for it; the caller's cancellation does not stop it."""
        if self._tg is None:
            return await fn()
        done = anyio.Event()
        outcome: list[Any] = []

        async def job() -> None:
            with self.track():
                try:
                    outcome.append((True, await fn()))
                except Exception as exc:
                    outcome.append((False, exc))
                finally:
                    done.set()

        self._tg.start_soon(job)
        await done.wait()
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value


class RpcHost(Protocol):
    """What a servicer gives the wrapper."""

    supervisor: Supervisor
    observer: Observer | None


def redact(message: betterproto2.Message) -> dict[str, Any]:
    """The request as a dict for logs, with every ``secrets`` map replaced by its size."""
    data: dict[str, Any] = message.to_dict(casing=betterproto2.Casing.SNAKE)
    if "secrets" in data:
        data["secrets"] = f"<{len(data['secrets'])} redacted>"
    return data


Handler = Callable[[Any, Req], Coroutine[Any, Any, Resp]]


def rpc(name: str, *, mutating: bool = False, log_level: str = "INFO") -> Callable[
    [Handler[Req, Resp]], Handler[Req, Resp]
]:
    """Decorate a servicer method as the CSI call ``name``."""

    def decorate(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(fn)
        async def wrapper(self: RpcHost, request: Req) -> Resp:
            volume_id = getattr(request, "volume_id", "") or getattr(request, "source_volume_id", "")
            with logger.contextualize(rpc=name, request_id=next(_request_ids), volume_id=volume_id):
                return await _call(self, name, fn, request, mutating, log_level)

        return wrapper

    return decorate


async def _call(  # noqa: PLR0917
    host: RpcHost,
    name: str,
    fn: Callable[[Any, Req], Awaitable[Resp]],
    request: Req,
    mutating: bool,
    log_level: str,
) -> Resp:
    started = time.perf_counter()
    logger.opt(lazy=True).debug("{} request {}", lambda: name, lambda: redact(request))
    status = Status.OK
    detail = ""
    try:
        with host.supervisor.track():
            if mutating:
                return await host.supervisor.run(lambda: fn(host, request))
            return await fn(host, request)
    except GRPCError as exc:
        status, detail = exc.status, exc.message or ""
        raise
    except anyio.get_cancelled_exc_class():
        status = Status.CANCELLED
        raise
    except Exception as exc:
        error = to_grpc_error(exc)
        status, detail = error.status, error.message or ""
        if status is Status.INTERNAL:
            logger.opt(exception=exc).error("{} failed unexpectedly: {}", name, exc)
        raise error from exc
    finally:
        seconds = time.perf_counter() - started
        level = log_level if status in (Status.OK, Status.CANCELLED) else "WARNING"
        if status is Status.ABORTED:
            level = "INFO"
        if detail:
            logger.log(level, "{} {} in {:.1f} ms: {}", name, status.name, seconds * 1000, detail)
        else:
            logger.log(level, "{} {} in {:.1f} ms", name, status.name, seconds * 1000)
        if host.observer is not None:
            host.observer.rpc_finished(name, status, seconds)
