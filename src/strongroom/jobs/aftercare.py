"""What `run` does once a job's snapshot is written: off-site copies, then retention.

Copies come first, so a snapshot reaches the vault before any policy could remove it
at home. Each copy goes to its repository with a shared lock whose lease is checked
before the copy commits; the copied snapshot is indexed in the catalog under that
repository's name; then the copy's own retention applies there. Retention removes only
snapshot objects of this client and job (the data goes with `prune`), never the
snapshot just written: a non-empty policy always keeps the newest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from strongroom.catalog import Catalog, SnapshotRecord
from strongroom.clock import Clock
from strongroom.config import JobSpec, Retention
from strongroom.engine.copier import Copier
from strongroom.engine.retention import Policy, Span, apply_policy
from strongroom.errors import IntegrityError, UsageError
from strongroom.repository import Repository, Snapshot
from strongroom.repository.locks import RepositoryLock


def policy_from_retention(retention: Retention) -> Policy:
    """A config's retention table as a policy (its ``within*`` are in seconds)."""
    return Policy(
        last=retention.last or 0,
        hourly=retention.hourly or 0,
        daily=retention.daily or 0,
        weekly=retention.weekly or 0,
        monthly=retention.monthly or 0,
        yearly=retention.yearly or 0,
        within=_span(retention.within),
        within_hourly=_span(retention.within_hourly),
        within_daily=_span(retention.within_daily),
        within_weekly=_span(retention.within_weekly),
        within_monthly=_span(retention.within_monthly),
        within_yearly=_span(retention.within_yearly),
    )


def _span(seconds: int | None) -> Span | None:
    return Span.from_seconds(seconds) if seconds else None


def _job_snapshots(
    spec: JobSpec, repo: Repository, records: list[SnapshotRecord]
) -> list[Snapshot]:
    """The snapshots the catalog's ``records`` name, read from ``repo``, that really are
    this job's; one gone or damaged is left out (neither copied nor judged)."""
    found = []
    for record in records:
        try:
            snap = repo.load_snapshot(record.id)
        except (IntegrityError, UsageError):
            continue
        if snap.client == spec.client and snap.job == spec.name:
            found.append(snap)
    return found


@dataclass
class Aftercare:
    catalog: Catalog
    clock: Clock
    hostname: str
    open_repository: Callable[[str], Repository]
    index_snapshot: Callable[[Repository, str, Snapshot], None]
    summary: dict[str, Any] = field(default_factory=dict)

    def run(self, spec: JobSpec, repo: Repository, snapshot: Snapshot) -> dict[str, Any]:
        """Copy ``snapshot`` to each off-site repository, then apply every retention.

        Returns what was done, for the run's summary; raises the first error (the run
        then fails, its snapshot kept), after trying nothing further.
        """
        copies = [self._copy(spec, repo, snapshot, c.repository, c.retention)
                  for c in spec.copies]  # fmt: skip
        forgotten = self._forget(spec, repo, spec.repository, spec.retention, keep=snapshot.id)
        return {"copies": copies, "forgotten": forgotten}

    def _copy(
        self,
        spec: JobSpec,
        repo: Repository,
        snapshot: Snapshot,
        target_name: str,
        retention: Retention,
    ) -> dict[str, Any]:
        target = self.open_repository(target_name)
        missed = self._missed(spec, repo, target_name, snapshot)
        lock = self._lock(target, f"copy {spec.client}/{spec.name}")
        try:
            copier = Copier(repo, target, before_commit=lock.ensure_valid)
            result = copier.copy([*missed, snapshot])
        finally:
            lock.release()
        for _, error in result.failed:
            raise IntegrityError(f"copy to {target_name} failed: {error}")
        target_ids = {s.id: t for s, t in result.skipped}
        target_ids.update((c.source.id, c.target_id) for c in result.copied)
        if snapshot.id not in target_ids:  # another copy committed it meanwhile
            target_ids.update((s.id, t) for s, t in copier.plan([snapshot])[1])
        for source in [*missed, snapshot]:
            if source.id in target_ids:
                copy = target.load_snapshot(target_ids[source.id])
                self.index_snapshot(target, target_name, copy)
        target_id = target_ids[snapshot.id]
        forgotten = self._forget(spec, target, target_name, retention, keep=target_id)
        return {
            "repository": target_name,
            "snapshot_id": target_id,
            "caught_up": [target_ids[s.id] for s in missed if s.id in target_ids],
            "bytes_uploaded": result.bytes_uploaded,
            "forgotten": forgotten,
        }

    def _missed(
        self, spec: JobSpec, repo: Repository, target_name: str, snapshot: Snapshot
    ) -> list[Snapshot]:
        """This job's snapshots at home that are newer than its newest copy in the
        target (earlier copies that failed), per the catalog; none when the target
        holds no copy of the job yet (`strongroom copy` fills in a history)."""
        copied = self.catalog.snapshots(spec.client, spec.name, repository=target_name)
        if not copied:
            return []
        newest = max(record.time_ns or 0 for record in copied)
        records = self.catalog.snapshots(spec.client, spec.name, repository=spec.repository)
        return _job_snapshots(
            spec,
            repo,
            [r for r in records if r.id != snapshot.id and (r.time_ns or 0) > newest],
        )

    def _forget(
        self, spec: JobSpec, repo: Repository, repo_name: str, retention: Retention, *, keep: str
    ) -> list[str]:
        """Apply ``retention`` to this job's snapshots in ``repo``. The catalog says which
        snapshots are the job's (reading every snapshot of a fleet's repository on each
        run would not scale); each is read from the repository before it is judged, and
        one the catalog does not know is never removed."""
        policy = policy_from_retention(retention)
        if policy.empty:
            return []
        records = self.catalog.snapshots(spec.client, spec.name, repository=repo_name)
        lock = self._lock(repo, f"retention {spec.client}/{spec.name}")
        try:
            mine = _job_snapshots(spec, repo, records)
            decision = apply_policy(mine, policy, self.clock.now_ns())
            removed = [s.id for s in decision.remove if s.id != keep]
            for snapshot_id in removed:
                lock.ensure_valid()
                repo.remove_snapshot(snapshot_id)
        finally:
            lock.release()
        self.catalog.forget_snapshots(removed)
        return removed

    def _lock(self, repo: Repository, purpose: str) -> RepositoryLock:
        lock = RepositoryLock(
            repo.backend, self.clock, exclusive=False, hostname=self.hostname, purpose=purpose
        ).acquire()
        lock.start_refreshing()
        return lock
