"""The storage interface: a handful of verbs over named objects, and one error contract.

Names are relative, '/'-separated paths such as ``data/ab/ab12...``. Objects are written
once; ``save`` must be atomic, so a reader sees the whole object or nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from strongroom.errors import StorageError, StorageFull


class BackendError(StorageError):
    """Any failure of a backend verb."""


class ObjectNotFound(BackendError):
    """The named object does not exist."""


class PermanentError(BackendError):
    """Retrying will not help (permissions, quota, bad request)."""


class TransientError(BackendError):
    """Retrying may help (timeouts, 5xx, connection resets)."""


class NoSpace(BackendError, StorageFull):
    """The storage is full; nothing was left under a final name."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    mtime: float


class StagedObject(Protocol):
    """An object being written piece by piece, invisible until published."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def publish(self, name: str) -> None:
        """Make the object visible under ``name``, atomically and durably."""

    def discard(self) -> None:
        """Throw the partial object away."""


class Backend(Protocol):
    """What every storage backend implements."""

    location: str

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` under ``name`` atomically; an existing object is replaced."""

    def stage(self, prefix: str) -> StagedObject:
        """Start an object under ``prefix`` whose name is known only at the end (a pack)."""

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes (all when None) from ``offset``; ObjectNotFound if absent."""

    def stat(self, name: str) -> ObjectInfo:
        """Size and modification time; ObjectNotFound if absent."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``; errors are raised, never hidden."""

    def remove(self, name: str) -> None:
        """Delete the object; ObjectNotFound if absent."""

    def exists(self) -> bool:
        """Whether the backend's root exists at all."""

    def create(self) -> None:
        """Create the backend's root (a directory, a prefix)."""

    def close(self) -> None:
        """Release resources."""


def load_into(backend: Backend, name: str, offset: int, out: memoryview) -> None:
    """Fill ``out`` with the bytes of ``name`` from ``offset`` on: straight into it
    where the backend can (a local file: no new buffer, so no fresh pages to fault in),
    else from ``load``. ObjectNotFound if absent or shorter."""
    reader = getattr(backend, "load_into", None)
    if reader is not None:
        reader(name, offset, out)
        return
    out[:] = backend.load(name, offset, len(out))


def validate_name(name: str) -> str:
    """Refuse names that could escape the backend's root."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise PermanentError(f"invalid object name {name!r}")
    return name
