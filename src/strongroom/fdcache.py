"""A few open descriptors per thread, reused while a thread works in one place."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable


class ThreadFdCache:
    """Per thread, the ``size`` descriptors used last (least recently used closed)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._caches: dict[int, OrderedDict[Hashable, int]] = {}

    def get(self, key: Hashable, opener: Callable[[], int]) -> int:
        """This thread's descriptor for ``key``, opened with ``opener`` if it has none."""
        fd = self.lookup(key)
        if fd is None:
            fd = opener()
            self.put(key, fd)
        return fd

    def lookup(self, key: Hashable) -> int | None:
        """This thread's descriptor for ``key``, if it has one (now the most recent)."""
        cache = self._mine()
        fd = cache.get(key)
        if fd is not None:
            cache.move_to_end(key)
        return fd

    def put(self, key: Hashable, fd: int) -> None:
        """Keep ``fd`` (now this cache's to close) as this thread's for ``key``; the
        least recently used one beyond ``size`` is closed (never the one used last)."""
        cache = self._mine()
        cache[key] = fd
        if len(cache) > self._size:
            os.close(cache.popitem(last=False)[1])

    def _mine(self) -> OrderedDict[Hashable, int]:
        me = threading.get_ident()
        cache = self._caches.get(me)
        if cache is None:
            cache = self._caches[me] = OrderedDict()
        return cache

    def close(self) -> None:
        """Close every thread's descriptors (once the threads are done)."""
        for cache in self._caches.values():
            for fd in cache.values():
                os.close(fd)
        self._caches.clear()
