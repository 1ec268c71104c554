"""The one error table (csi/errors.py): most specific first, every domain error to its code, the rest INTERNAL.

Tests through the real servicers show a failure anywhere in a call reaching the client mapped, never as
UNKNOWN; the rest pin the table itself.
"""

from __future__ import annotations

import inspect

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from backends import errors
from backends.base import VolumeSpec
from backends.system.errors import CommandError, SyscallError
from csi.errors import ERROR_TABLE, status_for, to_grpc_error
from csi.gen.csi import v1 as csi
from tests.csi.scripted import ScriptedBackend, serve
from tests.support import create_request

pytestmark = pytest.mark.anyio


async def test_unexpected_exception_is_internal_not_unknown() -> None:
    async def boom(spec: VolumeSpec) -> None:
        raise ZeroDivisionError("oops")

    async with serve(ScriptedBackend(boom)) as ch:
        with pytest.raises(GRPCError) as info:
            await csi.ControllerStub(ch).create_volume(create_request("pvc-x"))
    assert info.value.status == Status.INTERNAL
    assert "ZeroDivisionError" in (info.value.message or "")


@pytest.mark.parametrize(("exc", "status"), [
    (errors.CapacityExhausted("full"), Status.RESOURCE_EXHAUSTED),
    (errors.VolumeConflict("other size"), Status.ALREADY_EXISTS),
    (errors.OutOfRange("too small"), Status.OUT_OF_RANGE),
    (errors.DeviceNotBlank("has ext4"), Status.FAILED_PRECONDITION),
    (errors.Unavailable("gone"), Status.UNAVAILABLE),
    (errors.SystemFailure("mkfs died"), Status.INTERNAL),
])
async def test_domain_errors_map_through_the_table(exc: Exception, status: Status) -> None:
    async def fail(spec: VolumeSpec) -> None:
        raise exc

    async with serve(ScriptedBackend(fail)) as ch:
        with pytest.raises(GRPCError) as info:
            await csi.ControllerStub(ch).create_volume(create_request("pvc-x"))
    assert info.value.status == status
    assert info.value.message == str(exc)


#: Every domain error and the code the spec's error tables give it (house rule 4).
EXPECTED: dict[type[errors.BackendError], Status] = {
    errors.InvalidArgument: Status.INVALID_ARGUMENT,
    errors.UnsupportedParameter: Status.INVALID_ARGUMENT,
    errors.NotFound: Status.NOT_FOUND,
    errors.VolumeNotFound: Status.NOT_FOUND,
    errors.SnapshotNotFound: Status.NOT_FOUND,
    errors.AlreadyExists: Status.ALREADY_EXISTS,
    errors.VolumeConflict: Status.ALREADY_EXISTS,
    errors.SnapshotConflict: Status.ALREADY_EXISTS,
    errors.OutOfRange: Status.OUT_OF_RANGE,
    errors.CapacityExhausted: Status.RESOURCE_EXHAUSTED,
    errors.PreconditionFailed: Status.FAILED_PRECONDITION,
    errors.DeviceNotBlank: Status.FAILED_PRECONDITION,
    errors.VolumeInUse: Status.FAILED_PRECONDITION,
    errors.WrongNode: Status.FAILED_PRECONDITION,
    errors.Busy: Status.ABORTED,
    errors.Unavailable: Status.UNAVAILABLE,
    errors.StorageInUse: Status.UNAVAILABLE,
    errors.SystemFailure: Status.INTERNAL,
    errors.BackendError: Status.INTERNAL,  # a bare BackendError is a bug: no row names it
}


def test_every_domain_error_is_in_the_expected_table() -> None:
    classes = {cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.BackendError)}
    assert classes == set(EXPECTED)


@pytest.mark.parametrize(("kind", "status"), list(EXPECTED.items()), ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_domain_error_maps_to_its_code_with_its_message(kind: type[errors.BackendError], status: Status) -> None:
    exc = kind("the reason")
    assert status_for(exc) is status
    error = to_grpc_error(exc)
    assert (error.status, error.message) == (status, str(exc))


def test_the_table_lists_the_most_specific_class_first() -> None:
    """The first match wins, so a class after one of its bases would never be reached."""
    for index, (earlier, _) in enumerate(ERROR_TABLE):
        for later, _ in ERROR_TABLE[index + 1:]:
            assert not issubclass(later, earlier), f"{later.__name__} comes after its base {earlier.__name__}"


def test_a_subclass_takes_its_own_row_before_its_bases() -> None:
    """Command and syscall failures are SystemFailures (INTERNAL) even though nothing lists them by name."""
    assert status_for(CommandError(["mkfs.ext4", "/dev/loop9"], 1, "bad")) is Status.INTERNAL
    assert status_for(SyscallError("mount", 13, "/mnt")) is Status.INTERNAL

    class Narrow(errors.VolumeNotFound, errors.Busy):  # the earlier row of the table wins
        pass

    assert status_for(Narrow("x")) is Status.NOT_FOUND


@pytest.mark.parametrize("exc", [ValueError("bad"), KeyError("k"), ZeroDivisionError("z"), RuntimeError("")])
def test_anything_else_is_internal_and_names_its_type(exc: Exception) -> None:
    assert status_for(exc) is Status.INTERNAL
    error = to_grpc_error(exc)
    assert error.status is Status.INTERNAL
    assert error.message == f"internal error: {type(exc).__name__}: {exc}"


def test_a_grpc_error_passes_through_unchanged() -> None:
    original = GRPCError(Status.UNIMPLEMENTED, "not here")
    assert to_grpc_error(original) is original


async def test_the_servicers_map_what_a_node_call_raises_too() -> None:
    async with serve(ScriptedBackend()) as ch:
        with pytest.raises(GRPCError) as info:
            await csi.NodeStub(ch).node_get_volume_stats(csi.NodeGetVolumeStatsRequest(
                volume_id="lcv-" + "0" * 32, volume_path="/nowhere"))
    assert info.value.status is Status.NOT_FOUND
