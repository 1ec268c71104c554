"""Domain errors raised by backends and the system layer.

Backends never speak gRPC; they raise these, and ``csi/errors.py`` maps each
class to one status code in a single table (most specific class first).

    BackendError
    ├── InvalidArgument           a request value the backend cannot accept
    │   └── UnsupportedParameter  an unknown or malformed StorageClass parameter
    ├── NotFound
    │   ├── VolumeNotFound
    │   └── SnapshotNotFound
    ├── AlreadyExists             a name reused with different properties
    │   ├── VolumeConflict
    │   └── SnapshotConflict
    ├── OutOfRange                a size outside what the backend can provide
    ├── CapacityExhausted         no room (disk, extents, loop devices, free disks)
    ├── PreconditionFailed        the state of the world forbids the operation
    │   ├── DeviceNotBlank        a device holds data (or may): never formatted
    │   ├── VolumeInUse           still attached / mounted / published elsewhere
    │   └── WrongNode             the volume does not live on this node
    ├── Busy                      another operation holds the resource: retry
    ├── Unavailable               the backend itself is unhealthy right now
    │   └── StorageInUse          another driver instance holds the storage's lock
    └── SystemFailure             a command or syscall failed unexpectedly

``backends.system.errors.CommandError`` (a failed process) derives from
``SystemFailure`` so an unclassified tool failure still maps to INTERNAL with
its stderr attached, never to UNKNOWN.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base of every error a backend raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(BackendError):
    pass


class UnsupportedParameter(InvalidArgument):
    pass


class NotFound(BackendError):
    pass


class VolumeNotFound(NotFound):
    def __init__(self, volume_id: str) -> None:
        super().__init__(f"volume {volume_id!r} does not exist")
        self.volume_id = volume_id


class SnapshotNotFound(NotFound):
    def __init__(self, snapshot_id: str) -> None:
        super().__init__(f"snapshot {snapshot_id!r} does not exist")
        self.snapshot_id = snapshot_id


class AlreadyExists(BackendError):
    pass


class VolumeConflict(AlreadyExists):
    pass


class SnapshotConflict(AlreadyExists):
    pass


class OutOfRange(BackendError):
    pass


class CapacityExhausted(BackendError):
    pass


class PreconditionFailed(BackendError):
    pass


class DeviceNotBlank(PreconditionFailed):
    pass


class VolumeInUse(PreconditionFailed):
    pass


class WrongNode(PreconditionFailed):
    pass


class Busy(BackendError):
    pass


class Unavailable(BackendError):
    pass


class StorageInUse(Unavailable):
    pass


class SystemFailure(BackendError):
    pass
