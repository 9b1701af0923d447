"""Repository locks: shared for writers, exclusive for garbage collection.

A lock is a small plaintext JSON object under ``locks/``. Writers take shared locks,
so any number of backups run at once; an exclusive lock conflicts with every other
lock. A lock is a lease: its holder refreshes it (rewriting the same object, so a lock keeps
its name for the whole run), and a lock whose storage timestamp is older than the lease
it records has expired. A holder that finds its own lease expired (it was paused, say)
never renews it and must not commit. A lock left by a dead process on this host is
removed at once. Garbage collection (docs/gc.md) takes a shared lock and upgrades it
to an exclusive one only for its brief "nobody is writing" step.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import threading
from dataclasses import dataclass

from strongroom.backend import Backend, ObjectNotFound
from strongroom.clock import Clock
from strongroom.errors import LockedError

DEFAULT_LEASE_S = 30 * 60


@dataclass(frozen=True)
class LockInfo:
    name: str
    hostname: str
    pid: int
    time_ns: int
    exclusive: bool
    purpose: str
    age_s: float
    lease_s: float = DEFAULT_LEASE_S

    @property
    def expired(self) -> bool:
        return self.age_s > self.lease_s


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


class RepositoryLock:
    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        *,
        exclusive: bool,
        hostname: str,
        purpose: str,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.exclusive = exclusive
        self.hostname = hostname
        self.purpose = purpose
        self.lease_s = lease_s
        self.name: str | None = None
        self._refreshed = 0.0
        self._lapsed = False  # the lease ran out once: never renewed again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- reading --------------------------------------------------------------------

    def others(self, *, include_expired: bool = False) -> list[LockInfo]:
        """Locks held by others, live ones only unless ``include_expired``; stale ones
        of dead local processes are removed."""
        result = []
        now = self.clock.now_ns() / 1e9
        for info in self.backend.list("locks/"):
            if info.name == self.name:
                continue
            try:
                raw = self.backend.load(info.name)
            except ObjectNotFound:
                continue  # released while we listed
            try:
                doc = json.loads(raw)
                lock = LockInfo(
                    info.name,
                    str(doc["hostname"]),
                    int(doc["pid"]),
                    int(doc["time_ns"]),
                    bool(doc["exclusive"]),
                    str(doc.get("purpose", "")),
                    max(0.0, now - info.mtime),
                    # Each holder's own lease (older locks did not record it).
                    float(doc.get("lease_s", self.lease_s)),
                )
            except (ValueError, KeyError, TypeError):
                raise LockedError(
                    f"lock {info.name} is unreadable (corrupt)",
                    hint=f"if no strongroom process is using the repository, delete {info.name}",
                ) from None
            if lock.hostname == self.hostname and not _pid_alive(lock.pid):
                self._remove_quietly(info.name)
                continue
            if lock.expired and not include_expired:
                continue  # its holder may not commit any more
            result.append(lock)
        return result

    def _remove_quietly(self, name: str) -> None:
        try:
            self.backend.remove(name)
        except ObjectNotFound:
            pass

    def _conflicts(self) -> list[LockInfo]:
        return [lk for lk in self.others() if self.exclusive or lk.exclusive]

    # --- holding --------------------------------------------------------------------

    def _write(self) -> None:
        """Write (or rewrite in place) this lock; the caller holds ``_lock``."""
        doc = {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "time_ns": self.clock.now_ns(),
            "exclusive": self.exclusive,
            "purpose": self.purpose,
            "lease_s": self.lease_s,
        }
        # The same name for the whole run: a listing never misses a live lock between
        # an old and a new object, and a collector can recognise it later.
        name = self.name or f"locks/{secrets.token_hex(16)}"
        # Measured before the write: the lease runs from no later than the storage
        # timestamp others judge it by.
        started = self.clock.monotonic()
        self.backend.save(name, json.dumps(doc).encode())
        self.name = name
        self._refreshed = started

    def _lease_ran_out(self) -> bool:
        if self.clock.monotonic() - self._refreshed > self.lease_s:
            self._lapsed = True
        return self._lapsed

    def acquire(self) -> RepositoryLock:
        conflicts = self._conflicts()
        if not conflicts:
            with self._lock:
                self._lapsed = False
                self._write()
            # Two processes may have written at the same moment: look again.
            conflicts = self._conflicts()
            if not conflicts:
                return self
            self.release()
        raise _locked(conflicts[0])

    def refresh(self) -> None:
        """Renew the lease, unless it already ran out: an expired lease stays expired."""
        with self._lock:
            if self.name is not None and not self._lease_ran_out():
                self._write()

    def upgrade(self) -> None:
        """Turn this shared lock into an exclusive one, or raise LockedError and stay
        shared. Like ``acquire``, write first and then look, so of two processes
        racing, at least one sees the other."""
        with self._lock:
            if self.name is None or self._lease_ran_out():
                raise LockedError("this process's lock expired or was released")
            self.exclusive = True
            self._write()
        conflicts = self._conflicts()
        if conflicts:
            self.downgrade()
            raise _locked(conflicts[0])

    def downgrade(self) -> None:
        """Turn an exclusive lock back into a shared one."""
        with self._lock:
            if self.name is None or self._lease_ran_out():
                raise LockedError("this process's lock expired or was released")
            self.exclusive = False
            self._write()

    def start_refreshing(self) -> None:
        """Refresh the lease in the background every third of its length."""

        def loop() -> None:
            while not self._stop.wait(self.lease_s / 3):
                try:
                    self.refresh()
                except Exception:
                    return  # the holder notices at commit time: ensure_valid fails

        self._thread = threading.Thread(target=loop, name="strongroom-lock", daemon=True)
        self._thread.start()

    def ensure_valid(self) -> None:
        """Raise LockedError when the lease ran out (the holder was paused or cut off)."""
        if self.name is None:
            raise LockedError("the repository lock was released")
        if self._lease_ran_out():
            raise LockedError(
                "this process's lock expired while it was stopped; not committing",
                hint="run the command again",
            )
        try:
            self.backend.stat(self.name)
        except ObjectNotFound:
            raise LockedError("this process's lock was removed by another process") from None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            if self.name is not None:
                self._remove_quietly(self.name)
                self.name = None

    def __enter__(self) -> RepositoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _locked(holder: LockInfo) -> LockedError:
    kind = "an exclusive" if holder.exclusive else "a shared"
    return LockedError(
        f"the repository is locked: {kind} lock held by pid {holder.pid} on "
        f"{holder.hostname} ({holder.purpose or 'unknown purpose'}), "
        f"refreshed {holder.age_s:.0f}s ago"
    )
