"""How glibc's allocator is set up for strongroom's processes (``mallopt``).

Both settings are measured; on a C library other than glibc they do nothing.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers in glibc's malloc.h
M_ARENA_MAX = -8


def _mallopt(param: int, value: int) -> None:
    try:
        ctypes.CDLL(None).mallopt(param, value)
    except (OSError, AttributeError):
        pass  # not glibc: its own defaults


def map_big_buffers() -> None:
    """Have glibc map buffers of 1 MiB and more on their own and return them when freed.
    By default it raises that threshold to the largest buffer freed so far, and chunks
    of a few MiB then fragment the heap: a first backup of 2 GB peaked 35 MiB higher
    (measured with and without, across its processes), for ~5% less system time.
    Setting it also leaves the heap's trim threshold at 128 KiB (glibc no longer
    raises it): a trim threshold of 4 MiB halved a first backup's page faults, but
    its summed memory rose ~5 MiB above restic's for no wall time we could measure,
    so it stays."""
    _mallopt(M_MMAP_THRESHOLD, 1 << 20)


def limit_arenas() -> None:
    """One malloc arena per core, for a process that runs many threads (a director
    serving agent sessions in parallel). glibc gives each thread that allocates while
    another holds an arena a new one, up to 8 per core, and each keeps what was freed
    in it: a simulated night of 500 agent backups, 16 at a time (bench/fleet_night.py,
    2 cores), peaked at 218-224 MiB with the default and 184-193 MiB with one arena
    per core (four runs; one outlier at 124 MiB), wall time within the noise."""
    _mallopt(M_ARENA_MAX, max(1, os.cpu_count() or 1))
