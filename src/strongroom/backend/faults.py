"""A fault-injecting wrapper around any backend, with a fluent API.

    faulty = FaultyBackend(LocalBackend(path)).fail_saves_after(3, NoSpace("full"))
    faulty.corrupt_loads_of("data/")       # flip a bit in whatever is read there

Used by the test suite and available to users who want to rehearse failures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from strongroom.backend.base import Backend, BackendError, ObjectInfo, StagedObject


class FaultyBackend:
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location
        self._lock = threading.Lock()
        self._saves_left: int | None = None
        self._save_error: BackendError | None = None
        self._load_error: BackendError | None = None
        self._list_error: BackendError | None = None
        self._corrupt_prefix: str | None = None
        self._on_save: Callable[[str], None] | None = None
        self.saved: list[str] = []

    # --- configuring faults ---------------------------------------------------------

    def fail_saves_after(self, count: int, error: BackendError) -> FaultyBackend:
        """Let ``count`` saves through, then fail every save with ``error``."""
        self._saves_left, self._save_error = count, error
        return self

    def fail_loads(self, error: BackendError) -> FaultyBackend:
        self._load_error = error
        return self

    def fail_lists(self, error: BackendError) -> FaultyBackend:
        self._list_error = error
        return self

    def corrupt_loads_of(self, prefix: str) -> FaultyBackend:
        """Flip the lowest bit of the first byte of every load under ``prefix``."""
        self._corrupt_prefix = prefix
        return self

    def on_save(self, callback: Callable[[str], None]) -> FaultyBackend:
        """Call ``callback(name)`` after every successful save (to pause or kill there)."""
        self._on_save = callback
        return self

    def heal(self) -> FaultyBackend:
        self._saves_left = None
        self._save_error = self._load_error = self._list_error = None
        self._corrupt_prefix = None
        return self

    # --- the Backend verbs ----------------------------------------------------------

    def _before_save(self) -> None:
        with self._lock:
            if self._saves_left is not None:
                if self._saves_left <= 0 and self._save_error is not None:
                    raise self._save_error
                self._saves_left -= 1

    def _after_save(self, name: str) -> None:
        self.saved.append(name)
        if self._on_save is not None:
            self._on_save(name)

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._before_save()
        self.inner.save(name, data)
        self._after_save(name)

    def stage(self, prefix: str) -> StagedObject:
        return _FaultyStaged(self, self.inner.stage(prefix))

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if self._load_error is not None:
            raise self._load_error
        data = self.inner.load(name, offset, length)
        if self._corrupt_prefix is not None and name.startswith(self._corrupt_prefix) and data:
            data = bytes([data[0] ^ 1]) + data[1:]
        return data

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        if self._list_error is not None:
            raise self._list_error
        return self.inner.list(prefix)

    def remove(self, name: str) -> None:
        self.inner.remove(name)

    def exists(self) -> bool:
        return self.inner.exists()

    def create(self) -> None:
        self.inner.create()

    def close(self) -> None:
        self.inner.close()


class _FaultyStaged:
    """Publishing a staged object counts as a save, with the same faults."""

    def __init__(self, backend: FaultyBackend, inner: StagedObject) -> None:
        self._backend = backend
        self._inner = inner

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.write(data)

    def publish(self, name: str) -> None:
        try:
            self._backend._before_save()
        except BaseException:
            self._inner.discard()
            raise
        self._inner.publish(name)
        self._backend._after_save(name)

    def discard(self) -> None:
        self._inner.discard()
