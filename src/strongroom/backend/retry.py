"""Retry transient storage errors, a bounded number of times, around any backend.

Each verb is tried up to ``attempts`` times; between tries it sleeps an exponentially
growing delay (``base_delay``, doubled each time, capped at ``max_delay``) with jitter,
so many writers hitting the same hiccup do not retry in lockstep. Only TransientError
is retried: PermanentError, ObjectNotFound and NoSpace fail at once, because retrying
them cannot help and hides the cause. ``retries`` counts every retry, for tests and logs.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from strongroom.backend.base import (
    Backend,
    ObjectInfo,
    ObjectNotFound,
    StagedObject,
    TransientError,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 8
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 30.0


class MaybeApplied(TransientError):
    """The request failed after it was sent: the storage may have carried it out."""


class RetryingBackend:
    """A backend whose verbs retry TransientError with jittered exponential backoff."""

    def __init__(
        self,
        backend: Backend,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = backend
        self.location = backend.location
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.retries = 0
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RetryingBackend({self.inner!r}, attempts={self.attempts})"

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...): half fixed, half random."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        with self._lock:
            return cap / 2 + self._rng.uniform(0, cap / 2)

    def call(self, what: str, verb: Callable[[], T]) -> T:
        """``verb()``, retried on TransientError; the last error is raised when out of tries."""
        for attempt in range(1, self.attempts + 1):
            try:
                return verb()
            except TransientError as e:
                if attempt == self.attempts:
                    raise TransientError(
                        f"{e} (gave up after {self.attempts} attempts)", hint=e.hint
                    ) from e
                wait = self.delay(attempt)
                log.info("%s: %s; retrying in %.2fs (%d/%d)", what, e, wait, attempt, self.attempts)
                with self._lock:
                    self.retries += 1
                self._sleep(wait)
        raise AssertionError("unreachable")

    # --- the Backend verbs ----------------------------------------------------------

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self.call(f"saving {name}", lambda: self.inner.save(name, data))

    def stage(self, prefix: str) -> StagedObject:
        inner = self.call(f"staging {prefix}", lambda: self.inner.stage(prefix))
        return _RetryingStaged(self, inner)

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.call(f"loading {name}", lambda: self.inner.load(name, offset, length))

    def stat(self, name: str) -> ObjectInfo:
        return self.call(f"stat {name}", lambda: self.inner.stat(name))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Retried as a whole: a listing is complete or an error, never a partial one."""
        return iter(self.call(f"listing {prefix}", lambda: list(self.inner.list(prefix))))

    def remove(self, name: str) -> None:
        """A delete whose answer was lost may have happened: not found after that is done."""
        uncertain = False

        def remove_once() -> None:
            nonlocal uncertain
            try:
                self.inner.remove(name)
            except MaybeApplied:
                uncertain = True
                raise
            except ObjectNotFound:
                if not uncertain:
                    raise

        self.call(f"removing {name}", remove_once)

    def exists(self) -> bool:
        return self.call("checking the repository", self.inner.exists)

    def create(self) -> None:
        self.call("creating the repository", self.inner.create)

    def close(self) -> None:
        self.inner.close()


class _RetryingStaged:
    """Writes go straight through; publish is retried. The inner staged object must
    keep its data after a TransientError on publish (S3's does: it keeps its spool)."""

    def __init__(self, backend: RetryingBackend, inner: StagedObject) -> None:
        self._backend = backend
        self._inner = inner

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.write(data)

    def publish(self, name: str) -> None:
        self._backend.call(f"saving {name}", lambda: self._inner.publish(name))

    def discard(self) -> None:
        self._inner.discard()
