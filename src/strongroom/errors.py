"""The one exception tree of strongroom; every class carries its exit code and a hint.

    StrongroomError (1)
    ├── UsageError (2)
    ├── StorageError (10)
    │   ├── RepositoryNotFound (10)
    │   └── StorageFull (1): the exit code is "fatal", the message says "full"
    ├── LockedError (11)
    ├── WrongPasswordError (12)
    ├── IntegrityError (13)
    ├── PartialBackup (3): raised by nobody; the CLI maps warnings to 3
    └── Interrupted (130)

Errors become exit codes in exactly one place: ``strongroom.cli.main``.
"""

from __future__ import annotations

from typing import Any

EXIT_SUCCESS = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3
EXIT_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_PASSWORD = 12
EXIT_INTEGRITY = 13
EXIT_CLIENT_UNREACHABLE = 20
EXIT_PREREQUISITE = 21
EXIT_HOOK = 22
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_SUCCESS: "success",
    EXIT_FATAL: "fatal error (or, for `status --stale`, a stale client)",
    EXIT_USAGE: "usage or configuration error",
    EXIT_WARNINGS: "finished with warnings: the snapshot was written, "
    "but some files could not be read (listed)",
    EXIT_REPOSITORY: "repository missing or storage unreachable",
    EXIT_LOCKED: "locked: another run holds what this one needs",
    EXIT_PASSWORD: "wrong password or key",
    EXIT_INTEGRITY: "integrity error: damaged or missing data detected",
    EXIT_CLIENT_UNREACHABLE: "client unreachable",
    EXIT_PREREQUISITE: "prerequisite not met (no backup was attempted)",
    EXIT_HOOK: "a job hook failed (a before hook: no snapshot written; "
    "an after hook: the snapshot is kept)",
    EXIT_INTERRUPTED: "interrupted",
}


class StrongroomError(Exception):
    """Base of every error strongroom reports to a user."""

    exit_code = EXIT_FATAL
    hint = ""

    def __init__(
        self, message: str, *, hint: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        # Structured facts for events and JSON output (never secrets).
        self.details: dict[str, Any] = details or {}


class UsageError(StrongroomError):
    exit_code = EXIT_USAGE


class StorageError(StrongroomError):
    """Storage could not be reached or answered with an error."""

    exit_code = EXIT_REPOSITORY
    hint = "check that the repository location is reachable and try again"


class RepositoryNotFound(StorageError):
    hint = "create one with `strongroom init`, or check --repo"


class RepositoryExists(StrongroomError):
    hint = "init never overwrites a repository; choose another location"


class StorageFull(StorageError):
    exit_code = EXIT_FATAL
    hint = "free space on the repository's storage, then run the command again"


class LockedError(StrongroomError):
    exit_code = EXIT_LOCKED
    hint = "wait for the other run to finish"


class WrongPasswordError(StrongroomError):
    exit_code = EXIT_PASSWORD
    hint = "check STRONGROOM_PASSWORD / STRONGROOM_PASSWORD_FILE / STRONGROOM_PASSWORD_COMMAND"


class IntegrityError(StrongroomError):
    """Data read from the repository failed authentication or is missing."""

    exit_code = EXIT_INTEGRITY
    hint = "run `strongroom check --read-data` to see what is affected"


class Interrupted(StrongroomError):
    exit_code = EXIT_INTERRUPTED
