"""`strongroom forget`: apply retention, show why each snapshot is kept, remove the rest."""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from strongroom.backend import ObjectNotFound
from strongroom.cli.context import App, pass_app, snapshot_json, snapshot_matches
from strongroom.engine.retention import (
    BY_JOB,
    GROUP_FIELDS,
    UNLIMITED,
    WITHIN_PERIODS,
    GroupDecision,
    GroupKey,
    KeepReason,
    Policy,
    Span,
    group_snapshots,
    newest_first,
    plan_forget,
)
from strongroom.errors import StorageFull, StrongroomError, UsageError
from strongroom.jobs.aftercare import policy_from_retention
from strongroom.repository import Repository, Snapshot
from strongroom.repository.locks import RepositoryLock

if TYPE_CHECKING:
    from strongroom.config import Config

PRUNE_MODULE = "strongroom.cli.commands.prune"
REASON_WIDTH = 24  # "oldest monthly snapshot"


def _group_by(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
    """``client,job`` (the default), any of client, job, paths and tags, or "" (one
    group); ``host`` is restic's name for the client."""
    if value is None:
        return None
    fields = [f.strip() for f in value.split(",") if f.strip()]
    fields = ["client" if f == "host" else f for f in fields]
    unknown = [f for f in fields if f not in GROUP_FIELDS]
    if unknown:
        raise click.BadParameter(
            f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUP_FIELDS)}"
        )
    return tuple(dict.fromkeys(fields))


def _count(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A count for --keep-*: a number, or -1 / 'unlimited' for all (restic's spelling)."""
    if value is None:
        return None
    text = value.strip()
    if text == "unlimited":
        return UNLIMITED
    try:
        count = int(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a count (a number, or 'unlimited')") from None
    if count < UNLIMITED:
        raise click.BadParameter("negative counts other than -1 are not allowed (use 'unlimited')")
    return count


def _within(ctx: click.Context, param: click.Parameter, value: str | None) -> Span | None:
    """restic's duration: 1y5m7d2h (m is months)."""
    if value is None:
        return None
    try:
        return Span.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _within_period_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--keep-within-hourly ... --keep-within-yearly (restic's), in that order."""
    for period, unit in reversed(WITHIN_PERIODS):
        command = click.option(
            f"--keep-within-{period}",
            metavar="DURATION",
            callback=_within,
            help=f"Keep the newest snapshot of each {unit} within DURATION before the newest.",
        )(command)
    return command


@click.command("forget")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT-ID]...")
@click.option("--client", help="Only this client's snapshots.")
@click.option("--job", help="Only this job's snapshots.")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag (repeatable).")
@click.option("--keep-last", metavar="N", callback=_count, help="Keep the last N snapshots.")
@click.option(
    "--keep-hourly",
    metavar="N",
    callback=_count,
    help="Keep the newest snapshot of each of N hours.",
)
@click.option(
    "--keep-daily", metavar="N", callback=_count, help="Keep the newest snapshot of each of N days."
)
@click.option(
    "--keep-weekly", metavar="N", callback=_count, help="Keep the newest of each of N ISO weeks."
)
@click.option(
    "--keep-monthly", metavar="N", callback=_count, help="Keep the newest of each of N months."
)
@click.option(
    "--keep-yearly", metavar="N", callback=_count, help="Keep the newest of each of N years."
)
@click.option(
    "--keep-within",
    metavar="DURATION",
    callback=_within,
    help="Keep every snapshot newer than DURATION (1y5m7d2h) before the newest one.",
)
@_within_period_options
@click.option(
    "--keep-tag",
    "keep_tags",
    multiple=True,
    metavar="TAG[,TAG...]",
    help="Keep snapshots carrying all these tags (repeatable: any of the lists).",
)
@click.option(
    "--group-by",
    metavar="FIELDS",
    callback=_group_by,
    help="Group snapshots by these of client, job, paths, tags (default client,job; "
    "'' for one group); each group is judged on its own.",
)
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--prune", is_flag=True, help="Reclaim the space afterwards (runs `prune`).")
@click.option(
    "--unsafe-allow-remove-all",
    is_flag=True,
    help="With no --keep-* option, remove every snapshot matching --client/--job/--tag.",
)
@pass_app
def forget_command(
    app: App,
    snapshot_ids: tuple[str, ...],
    client: str | None,
    job: str | None,
    tags: tuple[str, ...],
    keep_last: int | None,
    keep_hourly: int | None,
    keep_daily: int | None,
    keep_weekly: int | None,
    keep_monthly: int | None,
    keep_yearly: int | None,
    keep_within: Span | None,
    keep_within_hourly: Span | None,
    keep_within_daily: Span | None,
    keep_within_weekly: Span | None,
    keep_within_monthly: Span | None,
    keep_within_yearly: Span | None,
    keep_tags: tuple[str, ...],
    group_by: tuple[str, ...] | None,
    dry_run: bool,
    prune: bool,
    unsafe_allow_remove_all: bool,
) -> int:
    """Apply retention: the --keep-* options, or else each job's retention from the
    config. Snapshots are grouped by client and job (or --group-by), periods are in UTC,
    and the rules are restic's (docs/retention.md). Snapshots of jobs without a policy
    are kept.

    With SNAPSHOT-IDs (8+ hex digits, or `latest` within --client/--job/--tag), remove
    exactly those snapshots instead; all are found before any is removed.
    """
    counts = (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    spans = (
        keep_within,
        keep_within_hourly,
        keep_within_daily,
        keep_within_weekly,
        keep_within_monthly,
        keep_within_yearly,
    )
    given = any(c is not None for c in counts + spans) or bool(keep_tags)
    last, hourly, daily, weekly, monthly, yearly = (c or 0 for c in counts)
    flag_policy = Policy(
        last,
        hourly,
        daily,
        weekly,
        monthly,
        yearly,
        within=keep_within,
        tags=tuple(tuple(t.strip() for t in spec.split(",")) for spec in keep_tags),
        within_hourly=keep_within_hourly,
        within_daily=keep_within_daily,
        within_weekly=keep_within_weekly,
        within_monthly=keep_within_monthly,
        within_yearly=keep_within_yearly,
    )
    if snapshot_ids and (given or unsafe_allow_remove_all):
        raise UsageError(
            "give snapshot ids or --keep-* options, not both",
            hint="forget ID... removes those snapshots; the --keep-* options apply retention",
        )
    if prune and importlib.util.find_spec(PRUNE_MODULE) is None:
        raise UsageError(
            "--prune is not available: this strongroom has no prune command",
            hint="run forget without --prune",
        )
    if unsafe_allow_remove_all and not (client or job or tags):
        raise UsageError(
            "--unsafe-allow-remove-all needs --client, --job or --tag",
            hint="it removes every matching snapshot; narrow it down on purpose",
        )
    remove_all = unsafe_allow_remove_all and flag_policy.empty
    if given and flag_policy.empty and not remove_all:
        raise UsageError(
            "the --keep-* options given keep nothing, so no snapshots will be removed",
            hint="give a count above zero, a duration, or a tag",
        )
    if snapshot_ids and group_by is not None:
        raise UsageError(
            "--group-by applies to retention, not to snapshots named by id",
            hint="forget ID... removes exactly those snapshots",
        )
    config = app.load_config_if_any()
    use_flags = given or remove_all or bool(snapshot_ids)
    # Without --keep-* options the policies come from the config: say first when there
    # is none at all (the --group-by rule below only matters once there is).
    policy_for = _everywhere(flag_policy) if use_flags else _config_policies(app, config)
    if not use_flags and group_by is not None and not {"client", "job"} <= set(group_by):
        raise UsageError(
            "the config's retention policies are per job: --group-by must include client "
            "and job unless --keep-* options are given",
            hint="add client,job to --group-by, or give --keep-* options",
        )

    with app.open_repository(load_index=False, lock=None) as repo:
        lock = None if dry_run else _take_lock(app, repo)
        try:
            if snapshot_ids:
                plan = _named(app, repo, snapshot_ids, client, job, tags)
            else:
                snapshots = app.select_snapshots(repo, client, job, tags)
                plan = plan_forget(
                    snapshots,
                    policy_for,
                    app.clock.now_ns(),
                    BY_JOB if group_by is None else group_by,
                )
            if remove_all:
                plan = [_everything(group) for group in plan]
            removed = [] if dry_run else _remove(repo, lock, plan)
        finally:
            if lock is not None:
                lock.release()
                app.lock = None

    _show(app, plan, dry_run, named=bool(snapshot_ids))
    if removed:
        _forget_in_catalog(app, config, removed)
    if prune and (removed or (dry_run and any(g.remove for g in plan))):
        return _run_prune(app, dry_run)
    return 0


# --- policies ---------------------------------------------------------------------------


def _everywhere(policy: Policy) -> Callable[[GroupKey], Policy | None]:
    return lambda key: policy


def _config_policies(app: App, config: Config | None) -> Callable[[GroupKey], Policy | None]:
    """Each job's retention for this repository: the job's own when it backs up here,
    its off-site copy's when it copies here."""
    if config is None:
        raise UsageError(
            "no retention policy: give --keep-* options, or a config whose jobs set retention",
            hint="e.g. `strongroom forget --keep-daily 7 --keep-weekly 4`",
        )
    names = _repository_names(config, app.require_repo_url())
    policies: dict[tuple[str, str], Policy] = {}
    for spec in config.jobs():
        if spec.repository in names:
            policies[spec.client, spec.name] = policy_from_retention(spec.retention)
        for copy in spec.copies:
            if copy.repository in names:
                policies[spec.client, spec.name] = policy_from_retention(copy.retention)
    if all(p.empty for p in policies.values()):
        raise UsageError(
            f"no job in {config.file} sets a retention policy for this repository",
            hint="set retention in the config, or give --keep-* options",
        )
    return lambda key: policies.get((key.client or "", key.job or ""))


def _repository_names(config: Config, given: str) -> set[str]:
    """The config's names for the repository given by name, URL or path."""
    names = {given}
    for name, spec in config.repositories.items():
        if given in (name, spec.url) or (
            "://" not in given
            and "://" not in spec.url
            and os.path.realpath(given) == os.path.realpath(spec.url)
        ):
            names.add(name)
    return names


def _named(
    app: App,
    repo: Repository,
    specs: tuple[str, ...],
    client: str | None,
    job: str | None,
    tags: tuple[str, ...],
) -> list[GroupDecision[Snapshot]]:
    """The snapshots named on the command line, grouped by client and job. Every one
    is found (and checked against --client/--job/--tag) before any is removed: a typo
    in the third id must not leave the first two removed."""
    chosen = app.resolve_snapshots(repo, specs, client, job, tags)
    for snap in chosen:
        if not snapshot_matches(snap, client, job, tags):
            raise UsageError(
                f"snapshot {snap.id[:8]} (client {snap.client}, job {snap.job}, tags "
                f"{list(snap.tags)}) is not what --client/--job/--tag select; "
                "nothing was removed"
            )
    return [
        GroupDecision(key, None, [], newest_first(snaps), [])
        for key, snaps in group_snapshots(chosen)
    ]


def _everything(group: GroupDecision[Snapshot]) -> GroupDecision[Snapshot]:
    """--unsafe-allow-remove-all with an empty policy: the whole group goes."""
    return GroupDecision(group.key, group.policy, [], newest_first(group.keep), [])


# --- removing ---------------------------------------------------------------------------


def _take_lock(app: App, repo: Repository) -> RepositoryLock | None:
    """The shared lock every writer holds; none when storage is too full for it.

    Removing snapshot objects only drops references and needs no space, so a full
    disk must not stop it (R12); acquire() has just seen no exclusive lock.
    """
    lock = RepositoryLock(
        repo.backend,
        app.clock,
        exclusive=False,
        hostname=socket.gethostname(),
        purpose="forget",
    )
    try:
        lock.acquire()
    except StorageFull:
        app.warn("the repository's storage is full: removing snapshots without a lock file")
        return None
    lock.start_refreshing()
    app.lock = lock
    return lock


def _remove(
    repo: Repository, lock: RepositoryLock | None, plan: list[GroupDecision[Snapshot]]
) -> list[str]:
    if lock is not None:
        lock.ensure_valid()
    removed = []
    for group in plan:
        for snap in group.remove:
            try:
                repo.remove_snapshot(snap.id)
            except ObjectNotFound:
                pass  # forgotten meanwhile by another process: gone all the same
            removed.append(snap.id)
    return removed


def _forget_in_catalog(app: App, config: Config | None, snapshot_ids: list[str]) -> None:
    """Drop removed snapshots from the catalog, when one is in use."""
    if not (app.catalog or os.environ.get("STRONGROOM_CATALOG") or config is not None):
        return
    url = app.catalog_url(config)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.exists():
            return  # no catalog was ever written here: nothing lists these snapshots
    try:
        catalog = app.open_catalog(config)
        try:
            count = catalog.forget_snapshots(snapshot_ids)
        finally:
            catalog.close()
    except StrongroomError as e:
        raise type(e)(
            f"removed {len(snapshot_ids)} snapshot(s) from the repository, but the catalog "
            f"could not be updated: {e}",
            hint="run `strongroom catalog rebuild` once the catalog is reachable",
        ) from e
    app.info(f"catalog: {count} snapshot(s) forgotten")


def _run_prune(app: App, dry_run: bool) -> int:
    command = cast(click.Command, importlib.import_module(PRUNE_MODULE).prune_command)
    ctx = click.get_current_context()
    if dry_run:
        if not any(p.name == "dry_run" for p in command.params):
            app.info("dry run: prune not run")
            return 0
        result = ctx.invoke(command, dry_run=True)
    else:
        app.info("running prune")
        result = ctx.invoke(command)
    return result if isinstance(result, int) else 0


# --- output -----------------------------------------------------------------------------


def _show(
    app: App, plan: list[GroupDecision[Snapshot]], dry_run: bool, *, named: bool = False
) -> None:
    if app.json:
        app.emit_json([_group_json(group) for group in plan])
        return
    for group in plan:
        if named:
            policy = "the snapshots named"
        else:
            policy = group.policy.describe() if group.policy is not None else "no policy"
        app.result(f"{group.key.describe()}: {policy}")
        if group.keep:
            app.result(f"keep {len(group.keep)} snapshot(s):")
            _table(app, group.reasons)
        if group.remove:
            app.result(f"remove {len(group.remove)} snapshot(s):")
            _table(app, [KeepReason(s, ()) for s in group.remove], with_reasons=False)
        app.result("")
    count = sum(len(g.remove) for g in plan)
    if dry_run:
        app.result(f"would remove {count} snapshot(s) (dry run)")
    else:
        app.result(f"removed {count} snapshot(s)")


def _table(app: App, rows: list[KeepReason[Snapshot]], *, with_reasons: bool = True) -> None:
    reasons = f"{'Reasons':{REASON_WIDTH}}  " if with_reasons else ""
    app.result(f"  {'ID':8}  {'Time':19}  {'Tags':12}  {reasons}Paths")
    for row in rows:
        s = row.snapshot
        lines = list(row.matches) or [""]
        first = f"{lines[0]:{REASON_WIDTH}}  " if with_reasons else ""
        app.result(
            f"  {s.id[:8]}  {s.time.strftime('%Y-%m-%d %H:%M:%S')}  {','.join(s.tags):12}  "
            f"{first}{', '.join(s.paths)}"
        )
        for more in lines[1:] if with_reasons else []:
            app.result(f"  {'':8}  {'':19}  {'':12}  {more}")


def _group_json(group: GroupDecision[Snapshot]) -> dict[str, Any]:
    """restic's forget group (tags, host, paths, keep, remove, reasons): ``host`` is the
    client, and ``client`` and ``job`` are given too; a field the snapshots were not
    grouped by is null."""
    key = group.key
    return {
        "tags": None if key.tags is None else list(key.tags),
        "host": key.client,
        "paths": None if key.paths is None else list(key.paths),
        "client": key.client,
        "job": key.job,
        "policy": group.policy.describe() if group.policy is not None else None,
        "keep": [snapshot_json(s) for s in group.keep],
        "remove": [snapshot_json(s) for s in group.remove],
        "reasons": [
            {
                "snapshot": snapshot_json(r.snapshot),
                "matches": list(r.matches),
                "counters": dict(r.counters),
            }
            for r in group.reasons
        ],
    }
