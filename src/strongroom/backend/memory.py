"""An in-memory backend, for tests and for users who want a fake at the storage boundary."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from strongroom.backend.base import ObjectInfo, ObjectNotFound, validate_name


class MemoryBackend:
    def __init__(self, location: str = "memory:") -> None:
        self.location = location
        self.objects: dict[str, tuple[bytes, float]] = {}
        self._created = False
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return self._created

    def create(self) -> None:
        self._created = True

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        validate_name(name)
        with self._lock:
            self.objects[name] = (bytes(data), time.time())

    def stage(self, prefix: str) -> _MemoryStaged:
        return _MemoryStaged(self)

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_name(name)
        try:
            data = self.objects[name][0]
        except KeyError:
            raise ObjectNotFound(f"loading {name}: not found") from None
        end = len(data) if length is None else offset + length
        if end > len(data):
            raise ObjectNotFound(f"loading {name}: short read")
        return data[offset:end]

    def stat(self, name: str) -> ObjectInfo:
        validate_name(name)
        try:
            data, mtime = self.objects[name]
        except KeyError:
            raise ObjectNotFound(f"stat {name}: not found") from None
        return ObjectInfo(name, len(data), mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            items = sorted((n, v) for n, v in self.objects.items() if n.startswith(prefix))
        for name, (data, mtime) in items:
            yield ObjectInfo(name, len(data), mtime)

    def remove(self, name: str) -> None:
        validate_name(name)
        with self._lock:
            if self.objects.pop(name, None) is None:
                raise ObjectNotFound(f"removing {name}: not found")

    def close(self) -> None:
        pass


class _MemoryStaged:
    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend
        self._buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def publish(self, name: str) -> None:
        self._backend.save(name, self._buf)

    def discard(self) -> None:
        self._buf = bytearray()
