"""Per-client/job run locks on the director: one run of a job at a time."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from strongroom.catalog import Catalog
from strongroom.clock import Clock
from strongroom.errors import LockedError


class JobLock:
    """An exclusive ``flock`` on ``state_dir/locks/CLIENT.JOB.lock`` and, with a
    catalog that directors share (PostgreSQL), the job's lock in that catalog too, so
    two directors never run the same job at once.

    The kernel drops the flock when the holder dies, and the database server the
    catalog lock when the holder's session ends, so a crashed run never leaves a
    stale lock.
    """

    def __init__(
        self, state_dir: Path, client: str, job: str, clock: Clock, catalog: Catalog | None = None
    ) -> None:
        self.path = state_dir / "locks" / f"{client}.{job}.lock"
        self.client, self.job = client, job
        self._clock = clock
        self._catalog = catalog
        self._fd: int | None = None
        self._release_shared: Callable[[], None] | None = None

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
                    raise self._locked(holder) from None
                time.sleep(0.2)
        try:
            self._release_shared = self._acquire_shared(deadline)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def _acquire_shared(self, deadline: float) -> Callable[[], None] | None:
        """The catalog's lock of this job, waiting for it until ``deadline``."""
        if self._catalog is None:
            return None
        while (release := self._catalog.lock_job(self.client, self.job)) is None:
            if self._clock.monotonic() >= deadline:
                raise self._locked(self._elsewhere())
            time.sleep(0.2)
        return release

    def _elsewhere(self) -> str:
        """Where the catalog says the job is running."""
        assert self._catalog is not None
        running = self._catalog.running_runs(self.client, self.job)
        if not running:
            return " (on another director)"
        run = running[0]
        since = f"{run.started_at:%Y-%m-%d %H:%M:%S} UTC"
        return f" (on director {run.director}, run {run.id}, started {since})"

    def _locked(self, holder: str) -> LockedError:
        return LockedError(
            f"job {self.client}/{self.job} is already running{holder}",
            hint="wait for it, or pass --wait DURATION",
        )

    def release(self) -> None:
        if self._release_shared is not None:
            self._release_shared()
            self._release_shared = None
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
