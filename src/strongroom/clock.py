"""An injectable clock, so no layer below the CLI calls ``time`` on its own."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall-clock time in nanoseconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock, for durations and timeouts."""


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start_ns: int = 1_764_028_800 * 10**9) -> None:
        self._now = start_ns
        self._mono = 0.0

    def now_ns(self) -> int:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += int(seconds * 1e9)
        self._mono += seconds
