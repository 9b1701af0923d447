"""One run of one job: lock, catalog record, backup, path index, outcome.

A run never raises for an ordinary failure: it returns an outcome carrying the exit
code, so `strongroom run` over many clients reports each and exits with the worst.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from strongroom import __version__
from strongroom.backend import open_backend
from strongroom.catalog import (
    BaseNotLatest,
    Catalog,
    Changes,
    PathEntry,
    RunCounters,
    RunStatus,
    SnapshotRecord,
)
from strongroom.clock import Clock
from strongroom.config import Config, JobSpec
from strongroom.engine.archiver import Archiver, BackupRequest
from strongroom.engine.files_cache import FilesCache
from strongroom.engine.fsmeta import display_path
from strongroom.engine.walk import changes, walk
from strongroom.engine.workers import Worker, Workers, file_threads
from strongroom.errors import (
    EXIT_CLIENT_UNREACHABLE,
    EXIT_FATAL,
    EXIT_HOOK,
    EXIT_INTERRUPTED,
    EXIT_PREREQUISITE,
    EXIT_SUCCESS,
    EXIT_WARNINGS,
    LockedError,
    StrongroomError,
    UsageError,
)
from strongroom.jobs.aftercare import Aftercare
from strongroom.jobs.environment import for_job_commands
from strongroom.jobs.locks import JobLock
from strongroom.jobs.notifier import Notifier
from strongroom.jobs.preflight import agent_command_line, preflight, run_command
from strongroom.jobs.streams import client_streams, director_streams
from strongroom.notify.event import redact
from strongroom.repository import Node, Repository, Snapshot
from strongroom.repository.locks import RepositoryLock


class HookFailed(StrongroomError):
    exit_code = EXIT_HOOK


HOOK_HINTS = {
    "before": "nothing was backed up; fix the hook, then run again",
    "after": "the snapshot was written and is kept; fix the hook",
}


INDEX_REFRESH_S = 600.0  # a director re-reads new index files at most this often

# `run` over several clients exits with the worst code, in this order (SPEC.md).
PRECEDENCE = (1, 13, 10, 12, 11, 20, 21, 22, 3, 0)


# The event that ends a run, by exit code; any other code is run.failed.
OUTCOME_EVENTS = {
    EXIT_SUCCESS: "run.succeeded",
    EXIT_WARNINGS: "run.warning",
    EXIT_CLIENT_UNREACHABLE: "client.unreachable",
    EXIT_PREREQUISITE: "prerequisite.failed",
    EXIT_HOOK: "hook.failed",
}


def outcome_event(outcome: RunOutcome) -> str:
    return OUTCOME_EVENTS.get(outcome.exit_code, "run.failed")


def worst_exit_code(codes: list[int]) -> int:
    if not codes:
        return EXIT_SUCCESS
    rank = {code: i for i, code in enumerate(PRECEDENCE)}
    return min(codes, key=lambda c: rank.get(c, 0))


@dataclass
class RunOutcome:
    client: str
    job: str
    exit_code: int
    status: str
    run_id: str | None = None
    snapshot_id: str | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # for the event

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "summary",
            "client": self.client,
            "job": self.job,
            "run_id": self.run_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "snapshot_id": self.snapshot_id,
            "message": self.message,
            "warnings": len(self.warnings),
            **self.summary,
        }


@dataclass
class Director:
    """What every run on this director shares."""

    config: Config
    catalog: Catalog
    clock: Clock
    state_dir: Path
    cache_dir: Path
    env: Mapping[str, str]
    hostname: str = field(default_factory=socket.gethostname)
    notifier: Notifier | None = None
    # Worker processes forked for this command's one local run (the first takes them).
    workers: Workers | None = None
    _repos: dict[str, Repository] = field(default_factory=dict)
    _repos_lock: threading.Lock = field(default_factory=threading.Lock)
    _refreshed: dict[str, float] = field(default_factory=dict)  # repo id -> monotonic

    def run(
        self,
        client: str,
        job: str | None = None,
        *,
        wait_s: float = 0.0,
        window: str | None = None,
    ) -> RunOutcome:
        """Run one job; StrongroomErrors become the outcome's exit code.

        With ``window``, at most one run per job and window succeeds: once one has, a
        retry returns at once with exit 0 and names that run.
        """
        spec = self.config.job(client, job)
        try:
            lock = JobLock(
                self.state_dir, spec.client, spec.name, self.clock, self.catalog
            ).acquire(wait_s)
        except StrongroomError as e:  # held elsewhere, or the catalog holding it is down
            status = "locked" if isinstance(e, LockedError) else "failed"
            outcome = RunOutcome(spec.client, spec.name, e.exit_code, status, message=str(e))
            self._notify(outcome)
            return outcome
        with lock:
            if window is not None and (done := self.catalog.window_success(
                    spec.client, spec.name, window)):  # fmt: skip
                return RunOutcome(
                    spec.client, spec.name, EXIT_SUCCESS, "skipped", done.id, done.snapshot_id,
                    message=f"window {window} already succeeded in run {done.id}"
                    + (f" (snapshot {done.snapshot_id[:8]})" if done.snapshot_id else ""),
                    summary={"window": window, "existing_run_id": done.id},
                )  # fmt: skip
            return self._run_locked(spec, window)

    def _run_locked(self, spec: JobSpec, window: str | None = None) -> RunOutcome:
        self.catalog.upsert_client(spec.client, host=spec.host)
        # Holding the job's lock, any run of it the catalog calls running is dead (its
        # director was killed, or lost the machine): record how it ended, once.
        for orphan in self.catalog.running_runs(spec.client, spec.name):
            ended = RunOutcome(
                spec.client, spec.name, EXIT_INTERRUPTED, "failed", orphan.id,
                message=f"interrupted: director {orphan.director} stopped during this run "
                "(found still running when the job's next run took its lock)",
            )  # fmt: skip
            self.catalog.finish_run(
                orphan.id, RunStatus.FAILED, exit_code=ended.exit_code, message=ended.message
            )
            self._notify(ended)  # the event that run never sent
        run_id = self.catalog.start_run(
            spec.client, spec.name, director=self.hostname, window=window
        )
        outcome = RunOutcome(spec.client, spec.name, EXIT_FATAL, "failed", run_id)
        if self.notifier is not None:
            self.notifier.emit(self.notifier.event(
                "run.started", client=spec.client, job=spec.name, run_id=run_id,
                message=f"{spec.client}/{spec.name}: backup started on {self.hostname}",
            ))  # fmt: skip
        try:
            self._backup(spec, outcome)
        except StrongroomError as e:
            outcome.exit_code, outcome.status = e.exit_code, "failed"
            outcome.message = str(e) + (f" ({e.hint})" if e.hint else "")
            outcome.details = dict(e.details)
        except Exception as e:  # a bug: record it, never lose the run
            outcome.exit_code, outcome.status = EXIT_FATAL, "failed"
            outcome.message = f"internal error: {type(e).__name__}: {e}"
            outcome.warnings.append(traceback.format_exc())
        # Errors may quote commands and URLs: the catalog and the output get what an
        # event would (R18), never a credential inside a URL.
        outcome.message = redact(outcome.message)
        status = {"succeeded": RunStatus.SUCCEEDED, "warning": RunStatus.WARNING}.get(
            outcome.status, RunStatus.FAILED
        )
        self.catalog.finish_run(
            run_id,
            status,
            exit_code=outcome.exit_code,
            counters=RunCounters(
                bytes_read=int(outcome.summary.get("bytes_read", 0)),
                bytes_new=int(outcome.summary.get("bytes_new", 0)),
                bytes_stored=int(outcome.summary.get("bytes_stored", 0)),
                files=int(outcome.summary.get("files", 0)),
                warnings=len(outcome.warnings),
            ),
            snapshot_id=outcome.snapshot_id,
            message=outcome.message or None,
            log="\n".join(outcome.warnings) or None,
        )
        self._notify(outcome)
        return outcome

    def _notify(self, outcome: RunOutcome) -> None:
        """The one event that says how a run ended (R11: exactly one per run)."""
        if self.notifier is None:
            return
        name = outcome_event(outcome)
        message = outcome.message or f"{outcome.client}/{outcome.job}: {outcome.status}"
        if name in ("run.succeeded", "run.warning") and not outcome.message:
            message = (
                f"{outcome.client}/{outcome.job}: snapshot {(outcome.snapshot_id or '')[:8]}"
                + (f" with {len(outcome.warnings)} warning(s)" if outcome.warnings else "")
            )
        details: dict[str, Any] = {"status": outcome.status, **outcome.details}
        if outcome.snapshot_id:
            details["snapshot_id"] = outcome.snapshot_id
        if outcome.warnings and outcome.exit_code == EXIT_WARNINGS:
            details["warnings"] = outcome.warnings[:20]
        for key in ("bytes_read", "bytes_new", "bytes_stored", "files", "duration_s"):
            if key in outcome.summary:
                details[key] = outcome.summary[key]
        self.notifier.emit(self.notifier.event(
            name, client=outcome.client, job=outcome.job, run_id=outcome.run_id,
            exit_code=outcome.exit_code, message=message, details=details,
        ))  # fmt: skip

    def _backup(self, spec: JobSpec, outcome: RunOutcome) -> None:
        if not spec.sources and not spec.streams:
            raise UsageError(
                f"client {spec.client}, job {spec.name}: no sources or streams configured"
            )
        try:
            checks = preflight(spec, self.catalog, self.clock, self.env)  # 20, 21: no backup
            evidence = [str(c) for c in checks]
            self._hooks(spec, "before")  # 22: no backup
            repo, snapshot = self._backup_checked(spec, outcome, evidence)
            self._hooks(spec, "after")  # 22, the snapshot is kept
            if spec.copies or spec.retention.model_dump(exclude_none=True):
                outcome.summary.update(self._aftercare().run(spec, repo, snapshot))
        except StrongroomError:
            self._hooks(spec, "failure", quiet=True)
            raise

    def _hooks(self, spec: JobSpec, when: str, *, quiet: bool = False) -> None:
        """Run the job's hooks for ``when``; a failing one raises HookFailed (exit 22).

        ``quiet`` (the failure hooks of a run that already failed): a hook that fails, or
        cannot reach the client, must not replace the error that made the run fail.
        """
        for hook in (h for h in spec.hooks if h.when == when):
            name = f"{when} hook {shlex.join(hook.command)}"
            try:
                check = run_command(spec, name, hook.command, hook.on, hook.timeout, self.env)
            except StrongroomError:
                if quiet:
                    continue
                raise
            if not check.met and not quiet:
                raise HookFailed(
                    f"{spec.client}/{spec.name}: {check.name}: {check.detail}",
                    hint=HOOK_HINTS.get(when),
                    details={"hook": when, "command": list(hook.command), "on": hook.on,
                             "reason": check.detail},
                )  # fmt: skip

    def _refresh_index(self, repo: Repository) -> None:
        with self._repos_lock:
            due = time.monotonic() - self._refreshed.get(repo.id, 0.0) > INDEX_REFRESH_S
            if due:
                self._refreshed[repo.id] = time.monotonic()
        if due:
            repo.refresh_index()

    def _aftercare(self) -> Aftercare:
        return Aftercare(self.catalog, self.clock, self.hostname, self._open, self._index_snapshot)

    def _backup_checked(
        self, spec: JobSpec, outcome: RunOutcome, evidence: list[str]
    ) -> tuple[Repository, Snapshot]:
        repo = self._open(spec.repository)
        lock = RepositoryLock(
            repo.backend,
            self.clock,
            exclusive=False,
            hostname=self.hostname,
            purpose=f"run {spec.client}/{spec.name}",
        ).acquire()
        lock.start_refreshing()
        # The shared index was loaded before this run's lease began: learn the packs a
        # collection has marked since (never deduplicated against), and what other
        # writers indexed, so a prune between runs costs no refused commit (docs/gc.md).
        repo.sync_markers()
        self._refresh_index(repo)
        try:
            if spec.transport == "local":
                snapshot, warnings = self._archive(repo, spec, lock, evidence)
            else:
                snapshot, warnings = self._archive_remote(repo, spec, lock, evidence)
        finally:
            lock.release()
        self._index_snapshot(repo, spec.repository, snapshot)
        s = snapshot.summary
        outcome.snapshot_id = snapshot.id
        outcome.warnings = warnings
        outcome.exit_code = EXIT_WARNINGS if warnings else EXIT_SUCCESS
        outcome.status = "warning" if warnings else "succeeded"
        outcome.summary = {
            "files": s.files_new + s.files_changed + s.files_unmodified,
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "bytes_read": s.bytes_read,
            "bytes_new": s.bytes_new,
            "bytes_stored": s.bytes_stored,
            "duration_s": s.duration_s,
        }
        return repo, snapshot

    def _open(self, name: str) -> Repository:
        """The director's one open repository of that name, shared by its runs.

        The key is derived once (Argon2id is slow on purpose) and the index loaded once;
        every pack a run uploads enters the shared index at once, so later runs
        deduplicate against earlier ones. Index files are written from the shared list
        of uploaded packs, so a run's snapshot never names data no index describes.
        """
        with self._repos_lock:
            repo = self._repos.get(name)
            if repo is None:
                spec = self.config.repository(name)
                backend = open_backend(spec.url)
                try:
                    repo = Repository.open(backend, spec.password(self.env))
                    repo.load_index()
                except BaseException:
                    backend.close()
                    raise
                self._repos[name] = repo
                self._refreshed[repo.id] = time.monotonic()
            return repo

    def close(self) -> None:
        with self._repos_lock:
            for repo in self._repos.values():
                repo.backend.close()
            self._repos.clear()

    def _archive(
        self, repo: Repository, spec: JobSpec, lock: RepositoryLock, evidence: list[str]
    ) -> tuple[Snapshot, list[str]]:
        cache = FilesCache(self.cache_dir / repo.id / f"files-{spec.client}-{spec.name}")
        lanes = self._take_workers(repo, spec.repository)
        archiver = Archiver(
            repo, self.clock, cache, before_commit=lock.ensure_valid, lanes=lanes,
            workers=file_threads(lanes),
        )  # fmt: skip
        result = archiver.backup(
            BackupRequest(
                **_request_fields(spec),
                username=getpass.getuser(),
                prerequisites=evidence,
                streams=director_streams(spec, self.env),
            )
        )
        warnings = [f"{w.path}: {w.message}" for w in result.warnings] + result.notes
        return result.snapshot, warnings

    def _take_workers(self, repo: Repository, name: str) -> list[Worker]:
        """The worker processes, set up for ``repo``, for the first local run that
        asks; none for the others (a worker serves one backup)."""
        with self._repos_lock:
            workers, self.workers = self.workers, None
        if workers is None:
            return []
        return workers.for_backup(repo, self.config.repository(name).url)

    def _archive_remote(
        self, repo: Repository, spec: JobSpec, lock: RepositoryLock, evidence: list[str]
    ) -> tuple[Snapshot, list[str]]:
        """Back up a client over SSH: its agent reads and compresses, we pack and encrypt."""
        from strongroom.agent.director import AgentBackup, AgentSession

        session = AgentSession(
            agent_command_line(spec), repo, self.clock, timeout_s=spec.timeout,
            before_commit=lock.ensure_valid, env=for_job_commands(self.env),
        )  # fmt: skip
        result = session.backup(AgentBackup(
            **_request_fields(spec), prerequisites=evidence, client_streams=client_streams(spec),
            director_streams=director_streams(spec, self.env),
        ))  # fmt: skip
        return result.snapshot, result.warnings

    def _index_snapshot(self, repo: Repository, repo_name: str, snapshot: Snapshot) -> None:
        """Record the snapshot and its paths in the catalog, for `find` across the fleet:
        as changes against the lineage's last recorded snapshot when there is one (its
        unchanged subtrees are not even read), else every entry."""
        record = snapshot_record(repo_name, snapshot)
        head = self.catalog.lineage_head(repo_name, snapshot.client, snapshot.job)
        if head is not None and head.id != snapshot.id:
            try:
                changed, removed = changes(repo, bytes.fromhex(head.tree), snapshot.tree)
            except (StrongroomError, ValueError):
                pass  # the base's trees are gone or damaged: record every entry
            else:
                try:
                    self.catalog.record_snapshot(
                        record,
                        [_path_entry(path, node) for path, node in changed],
                        Changes(head.id, [display_path(path) for path in removed]),
                    )
                    return
                except BaseNotLatest:
                    pass  # another snapshot was recorded (or forgotten) meanwhile
        self.catalog.record_snapshot(record, path_entries(repo, snapshot))


def _request_fields(spec: JobSpec) -> dict[str, Any]:
    """What a job asks of a backup, local or through the agent."""
    return {
        "paths": list(spec.sources),
        "client": spec.client,
        "job": spec.name,
        "tags": list(spec.tags),
        "excludes": list(spec.exclude),
        "hostname": spec.host,
        "program_version": f"strongroom {__version__}",
    }


def snapshot_record(repo_name: str, snapshot: Snapshot) -> SnapshotRecord:
    return SnapshotRecord(
        id=snapshot.id,
        repository=repo_name,
        client=snapshot.client,
        job=snapshot.job,
        time=datetime.fromtimestamp(snapshot.time_ns / 1e9, UTC),
        tree=snapshot.tree.hex(),
        paths=list(snapshot.paths),
        tags=list(snapshot.tags),
        summary={k: getattr(snapshot.summary, k) for k in snapshot.summary.__struct_fields__},
        hostname=snapshot.hostname,
        time_ns=snapshot.time_ns,
    )


def path_entries(repo: Repository, snapshot: Snapshot) -> list[PathEntry]:
    return [_path_entry(path, node) for path, node in walk(repo, snapshot.tree)]


def _path_entry(path: bytes, node: Node) -> PathEntry:
    return PathEntry(
        path=display_path(path),
        type=node.type,
        size=node.size,
        mtime=datetime.fromtimestamp(node.mtime_ns / 1e9, UTC),
    )


def default_state_dir(env: Mapping[str, str]) -> Path:
    if path := env.get("STRONGROOM_STATE_DIR"):
        return Path(path)
    if os.geteuid() == 0:
        return Path("/var/lib/strongroom")
    base = env.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "strongroom"
