"""`strongroom prune`: reclaim the space of forgotten data, beside running backups."""

from __future__ import annotations

import socket

import click

from strongroom.cli.context import App, pass_app
from strongroom.config.units import format_duration, parse_duration
from strongroom.engine.prune import DEFAULT_MAX_UNUSED, PruneOptions, PruneResult, prune
from strongroom.errors import EXIT_SUCCESS, UsageError
from strongroom.repository.gc import DEFAULT_GRACE_S, GC_PURPOSE
from strongroom.repository.locks import RepositoryLock


def _percent(text: str) -> float:
    value = text.strip()
    if value == "unlimited":
        return 100.0
    try:
        percent = float(value.removesuffix("%"))
    except ValueError:
        raise UsageError(f"--max-unused {text!r} is not a percentage (like 10%)") from None
    if not 0 <= percent <= 100:
        raise UsageError(f"--max-unused {text!r} is not between 0% and 100%")
    return percent


@click.command("prune")
@click.option(
    "--max-unused",
    default=f"{DEFAULT_MAX_UNUSED:g}%",
    show_default=True,
    metavar="P%",
    help="Repack partly used packs until at most this share of stored data is unused "
    "('unlimited': never repack).",
)
@click.option(
    "--grace",
    default=format_duration(DEFAULT_GRACE_S),
    show_default=True,
    metavar="DURATION",
    help="How long unused packs stay marked before a later prune deletes them "
    "while backups are running (at least 1h).",
)
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be done.")
@pass_app
def prune_command(app: App, max_unused: str, grace: str, dry_run: bool) -> int:
    """Reclaim the space of forgotten data, and repack partly used packs.

    Safe beside any number of running backups: while one is running, unused packs are
    only marked, and a later prune deletes them once they have been unused for the
    grace period and the backups running when they were marked have finished. When no
    backup is running, the space is reclaimed at once. A damaged repository (exit 13)
    or a storage listing error stops prune before it deletes anything; another prune
    running is exit 11.
    """
    try:
        grace_s = parse_duration(grace)
    except ValueError as e:
        raise UsageError(f"--grace: {e}") from None
    options = PruneOptions(grace_s=grace_s, max_unused=_percent(max_unused), dry_run=dry_run)
    hostname = socket.gethostname()
    with app.open_repository(load_index=False, lock=None) as repo:

        def new_lock() -> RepositoryLock:
            return RepositoryLock(
                repo.backend, app.clock, exclusive=False, hostname=hostname, purpose=GC_PURPOSE
            )

        result = prune(repo, app.clock, new_lock, options)
    if app.json:
        app.json_line("summary", exit_code=EXIT_SUCCESS, **_summary(result))
    else:
        _show(app, result, options)
    return EXIT_SUCCESS


def _summary(r: PruneResult) -> dict[str, object]:
    return {
        "dry_run": r.dry_run,
        "mode": r.mode,
        "snapshots": r.snapshots,
        "packs": r.packs,
        "bytes": r.bytes,
        "packs_unused": r.packs_unused,
        "bytes_unused": r.bytes_unused,
        "packs_deleted": r.packs_deleted,
        "bytes_freed": r.bytes_freed,
        "packs_repacked": r.packs_repacked,
        "blobs_repacked": r.blobs_repacked,
        "bytes_repacked": r.bytes_repacked,
        "candidates_marked": r.candidates_marked,
        "bytes_marked": r.bytes_marked,
        "packs_waiting": r.packs_waiting,
        "bytes_waiting": r.bytes_waiting,
        "packs_deferred": r.packs_deferred,
        "bytes_deferred": r.bytes_deferred,
        "index_files_rewritten": r.index_files_rewritten,
        "markers_removed": r.markers_removed,
        "notes": r.notes,
    }


def _show(app: App, r: PruneResult, options: PruneOptions) -> None:
    for note in r.notes:
        app.info(f"note: {note}")
    grace = format_duration(options.grace_s)
    app.result(
        f"{r.snapshots} snapshot(s), {r.packs} pack(s) ({_size(r.bytes)}) examined; "
        f"{r.packs_unused} pack(s) ({_size(r.bytes_unused)}) unused"
    )
    if r.dry_run:
        app.result(
            f"with no backup running, all {r.packs_unused} unused pack(s) would be "
            f"deleted at once; otherwise {r.packs_deleted} ({_size(r.bytes_freed)}), "
            f"marked long enough ago, would be deleted, {r.candidates_marked} more "
            f"marked for a prune {grace} later"
        )
        if r.packs_repacked:
            app.result(f"{r.packs_repacked} partly used pack(s) would be repacked")
        return
    app.result(f"{r.packs_deleted} pack(s) deleted, {_size(r.bytes_freed)} freed")
    if r.packs_repacked:
        app.result(
            f"{r.packs_repacked} partly used pack(s) repacked "
            f"({_size(r.bytes_repacked)} of used data copied)"
        )
    if r.mode == "at-once":
        app.result("no backup was running: unused space was reclaimed at once")
        return
    if r.candidates_marked:
        app.result(
            f"{r.candidates_marked} unused pack(s) ({_size(r.bytes_marked)}) marked: a "
            f"prune at least {grace} later deletes them, once the backups running now "
            "have finished"
        )
    if r.packs_waiting:
        app.result(
            f"{r.packs_waiting} marked pack(s) ({_size(r.bytes_waiting)}) wait for the "
            "grace period or for running backups"
        )
    if r.packs_deferred:
        app.result(
            f"{r.packs_deferred} unused pack(s) ({_size(r.bytes_deferred)}) younger than "
            f"{grace} left alone: most likely a running backup's new data; a later prune "
            "marks what is still unused"
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
