"""`strongroom copy`: copy snapshots into another repository (an off-site vault).

The target's password: a repository named in the config brings its own
(``password_file`` / ``password_command``); otherwise ``--to-password-file``,
``--to-password-command``, or the environment's ``STRONGROOM_TO_PASSWORD``,
``STRONGROOM_TO_PASSWORD_FILE`` or ``STRONGROOM_TO_PASSWORD_COMMAND`` (the source keeps
``STRONGROOM_PASSWORD*``, as restic's ``copy`` keeps ``RESTIC_FROM_PASSWORD*`` apart).
"""

from __future__ import annotations

import functools
import getpass
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from strongroom.backend import open_backend
from strongroom.cli.context import App, format_size, pass_app
from strongroom.config.repositories import read_password_file, run_password_command
from strongroom.engine.copier import CopiedSnapshot, Copier, CopyResult
from strongroom.errors import EXIT_INTEGRITY, EXIT_SUCCESS, StrongroomError, WrongPasswordError
from strongroom.repository import Repository, Snapshot
from strongroom.repository.locks import RepositoryLock

TO_PASSWORD = "STRONGROOM_TO_PASSWORD"
TO_PASSWORD_FILE = "STRONGROOM_TO_PASSWORD_FILE"
TO_PASSWORD_COMMAND = "STRONGROOM_TO_PASSWORD_COMMAND"


@click.command("copy")
@click.argument("snapshots", nargs=-1)
@click.option("--to", "to", required=True, metavar="NAME|URL", help="The target repository.")
@click.option("--to-password-file", type=click.Path(), help="The target's password, from a file.")
@click.option("--to-password-command", metavar="CMD", help="The target's password, from a command.")
@click.option("--client", help="Only this client's snapshots.")
@click.option("--job", help="Only this job's snapshots.")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag.")
@click.option("--dry-run", is_flag=True, help="Show what would be copied; copy nothing.")
@pass_app
def copy_command(
    app: App,
    snapshots: tuple[str, ...],
    to: str,
    to_password_file: str | None,
    to_password_command: str | None,
    client: str | None,
    job: str | None,
    tags: tuple[str, ...],
    dry_run: bool,
) -> int:
    """Copy the snapshots the target lacks (all, the ones named, or --client/--job/--tag).

    Data is re-encrypted and re-identified for the target's keys, and only blobs the
    target lacks are uploaded; every new pack is read back and verified before the
    snapshot naming it is written. A second copy copies nothing. Snapshots whose data
    is damaged in the source are not copied (exit 13); the others are.

    Target password: the config's, for a configured repository; else
    --to-password-file, --to-password-command, or STRONGROOM_TO_PASSWORD[_FILE|_COMMAND].
    """
    started = time.monotonic()
    target_url, target_password = _target(app, to, to_password_file, to_password_command)
    with app.open_repository(purpose=f"copy to {to}") as source:
        chosen = app.choose_snapshots(source, snapshots, client, job, tags)
        with _open_target(app, target_url, target_password, f"copy from {source.id[:8]}") as (
            target,
            lock,
        ):
            progress = _Progress(app)
            copier = Copier(source, target, progress, before_commit=lock.ensure_valid)
            if dry_run:
                todo, there = copier.plan(chosen)
                return _dry_run(app, todo, there)
            result = copier.copy(chosen)
    code = EXIT_INTEGRITY if result.failed else EXIT_SUCCESS
    _summary(app, result, to, code, time.monotonic() - started)
    _notify(app, to, client, job, result, code)
    return code


def _target(
    app: App, given: str, password_file: str | None, password_command: str | None
) -> tuple[str, Callable[[], bytes]]:
    """The target's URL and where its password comes from (see the module docstring)."""
    config = app.load_config_if_any()
    spec = None
    if config is not None:
        spec = next((s for n, s in config.repositories.items() if given in (n, s.url)), None)
    url = given if spec is None else spec.url
    if password_file is not None:
        return url, functools.partial(read_password_file, password_file)
    if password_command is not None:
        argv = shlex.split(password_command)
        return url, functools.partial(run_password_command, argv, os.environ)
    if spec is None:
        return url, _password_from_env
    configured = functools.partial(spec.password, os.environ)
    if spec.password_file is not None or spec.password_command is not None:
        return url, configured
    # A configured repository without its own password source: STRONGROOM_TO_PASSWORD*,
    # then what the config says for it (STRONGROOM_PASSWORD*).
    return url, functools.partial(_password_from_env, configured)


def _password_from_env(fallback: Callable[[], bytes] | None = None) -> bytes:
    if (value := os.environ.get(TO_PASSWORD)) is not None:
        return value.encode()
    if path := os.environ.get(TO_PASSWORD_FILE):
        return read_password_file(path)
    if command := os.environ.get(TO_PASSWORD_COMMAND):
        return run_password_command(shlex.split(command), os.environ)
    if fallback is not None:
        return fallback()
    if sys.stdin.isatty():
        return getpass.getpass("target repository password: ").encode()
    raise WrongPasswordError(
        "no password for the target repository",
        hint=f"use --to-password-file or --to-password-command, or set {TO_PASSWORD}, "
        f"{TO_PASSWORD_FILE} or {TO_PASSWORD_COMMAND}",
    )


@contextmanager
def _open_target(
    app: App, url: str, password: Callable[[], bytes], purpose: str
) -> Iterator[tuple[Repository, RepositoryLock]]:
    """Open, share-lock and index the target, like App.open_repository does the source."""
    backend = open_backend(url)
    try:
        try:
            repo = Repository.open(backend, password())
        except WrongPasswordError as e:
            raise WrongPasswordError(f"target repository {url}: {e}", hint=e.hint) from None
        lock = RepositoryLock(
            backend, app.clock, exclusive=False, hostname=socket.gethostname(), purpose=purpose
        ).acquire()
        lock.start_refreshing()
        try:
            repo.load_index()
            for err in repo.index_errors:
                app.warn(f"target: {err} (run `strongroom check` on it)")
            yield repo, lock
        finally:
            lock.release()
    finally:
        backend.close()


class _Progress:
    def __init__(self, app: App) -> None:
        self.app = app

    def copied(self, copied: CopiedSnapshot) -> None:
        s = copied.source
        self.app.info(
            f"copied {s.id[:8]} ({s.client}/{s.job}, {s.time:%Y-%m-%d %H:%M}) -> "
            f"{copied.target_id[:8]}: {copied.blobs_new} new blobs, "
            f"{format_size(copied.bytes_stored)} stored"
        )
        self.app.json_line(
            "status",
            action="copied",
            source_id=s.id,
            target_id=copied.target_id,
            client=s.client,
            job=s.job,
            blobs_new=copied.blobs_new,
            bytes_new=copied.bytes_new,
            bytes_stored=copied.bytes_stored,
        )

    def skipped(self, snapshot: Snapshot, target_id: str) -> None:
        self.app.json_line("status", action="skipped", source_id=snapshot.id, target_id=target_id)

    def failed(self, snapshot: Snapshot, error: str) -> None:
        click.echo(f"error: snapshot {snapshot.id[:8]} not copied: {error}", err=True)
        self.app.json_line("error", source_id=snapshot.id, message=error)


def _summary(app: App, result: CopyResult, to: str, code: int, duration: float) -> None:
    if app.json:
        app.json_line(
            "summary",
            exit_code=code,
            target=to,
            snapshots_copied=len(result.copied),
            snapshots_skipped=len(result.skipped),
            snapshots_failed=len(result.failed),
            copied=[{"source_id": c.source.id, "target_id": c.target_id} for c in result.copied],
            failed=[{"source_id": s.id, "error": err} for s, err in result.failed],
            blobs_read=result.blobs_read,
            bytes_read=result.bytes_read,
            blobs_uploaded=result.blobs_uploaded,
            bytes_uploaded=result.bytes_uploaded,
            blobs_deduplicated=result.blobs_deduplicated,
            packs_uploaded=result.packs_uploaded,
            packs_verified=result.packs_verified,
            duration_s=round(duration, 3),
        )
        return
    app.result(
        f"{len(result.copied)} snapshot(s) copied to {to}, {len(result.skipped)} already "
        f"there" + (f", {len(result.failed)} FAILED" if result.failed else "") + "; "
        f"{result.blobs_uploaded} blobs ({format_size(result.bytes_uploaded)}) uploaded, "
        f"{result.blobs_deduplicated} already in the target; "
        f"{result.packs_verified} new pack(s) verified"
    )


def _dry_run(app: App, todo: list[Snapshot], there: list[tuple[Snapshot, str]]) -> int:
    if app.json:
        app.emit_json(
            {
                "type": "summary",
                "dry_run": True,
                "exit_code": EXIT_SUCCESS,
                "would_copy": [s.id for s in todo],
                "already_there": [{"source_id": s.id, "target_id": t} for s, t in there],
            }
        )
        return EXIT_SUCCESS
    for s in todo:
        app.result(f"would copy {s.id[:8]} ({s.client}/{s.job}, {s.time:%Y-%m-%d %H:%M})")
    app.result(f"{len(todo)} snapshot(s) to copy, {len(there)} already there (dry run)")
    return EXIT_SUCCESS


def _notify(
    app: App, to: str, client: str | None, job: str | None, result: CopyResult, code: int
) -> None:
    """A ``copy.finished`` event, when a config names sinks for it."""
    config = app.load_config_if_any()
    if config is None:
        return
    from strongroom.cli.commands.run import report_deliveries
    from strongroom.jobs.notifier import Notifier

    details: dict[str, Any] = {
        "target": to,
        "snapshots_copied": len(result.copied),
        "snapshots_skipped": len(result.skipped),
        "snapshots_failed": len(result.failed),
        "failed": [{"source_id": s.id, "error": err} for s, err in result.failed][:20],
        "bytes_uploaded": result.bytes_uploaded,
    }
    message = f"copy to {to}: {len(result.copied)} copied, {len(result.skipped)} already there" + (
        f", {len(result.failed)} failed (damaged source data)" if result.failed else ""
    )
    try:
        catalog = app.open_catalog(config)
    except StrongroomError as e:
        app.warn(f"copy.finished not recorded: {e}")
        return
    try:
        notifier = Notifier(config, catalog, app.clock, dict(os.environ))
        event = notifier.event(
            "copy.finished",
            client=client,
            job=job,
            exit_code=code,
            message=message,
            details=details,
        )
        report_deliveries(app, notifier.emit(event))
    except StrongroomError as e:
        app.warn(f"copy.finished not recorded: {e}")
    finally:
        catalog.close()
