"""Per-client/job run locks on the director: one run of a job at a time."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from strongroom.clock import Clock
from strongroom.errors import LockedError


class JobLock:
    """An exclusive ``flock`` on ``state_dir/locks/CLIENT.JOB.lock``.

    The kernel drops it when the holder dies, so a crashed run never leaves a stale lock.
    """

    def __init__(self, state_dir: Path, client: str, job: str, clock: Clock) -> None:
        self.path = state_dir / "locks" / f"{client}.{job}.lock"
        self.client, self.job = client, job
        self._clock = clock
        self._fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> JobLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = self._clock.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if self._clock.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockedError(
                        f"job {self.client}/{self.job} is already running{holder}",
                        hint="wait for it, or pass --wait DURATION",
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> JobLock:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
