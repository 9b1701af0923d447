"""Fakes at real boundaries, shared by strongroom's tests and its users' tests:
an in-memory backend, a fault-injecting backend wrapper, and a clock that you move."""

from __future__ import annotations

from strongroom.backend.faults import FaultyBackend
from strongroom.backend.memory import MemoryBackend
from strongroom.clock import FakeClock

__all__ = ["FakeClock", "FaultyBackend", "MemoryBackend"]
