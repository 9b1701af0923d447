"""`strongroom backup`: ad hoc backup of local paths, and of a command's output."""

from __future__ import annotations

import getpass
import hashlib
import os
import shlex
import socket
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from strongroom import __version__
from strongroom.cli.context import App, default_client, format_size, pass_app
from strongroom.engine.scanproc import start_scan
from strongroom.errors import EXIT_SUCCESS, EXIT_WARNINGS, UsageError

if TYPE_CHECKING:
    from strongroom.engine.scan import Scanner
    from strongroom.engine.streams import CommandStream

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(value: str) -> int:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--time {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    # Integer arithmetic: a float timestamp would lose the microseconds.
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


@click.command("backup")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--client", help="Client name recorded in the snapshot (default: host name).")
@click.option("--job", default="default", show_default=True, help="Job name.")
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--exclude", "excludes", multiple=True, help="Glob to leave out (repeatable).")
@click.option("--time", "time_", help="Snapshot time (ISO 8601) instead of now.")
@click.option(
    "--stdin-name",
    metavar="NAME",
    help="Store the output of --stdin-from as /stdin/NAME (a relative path).",
)
@click.option(
    "--stdin-from",
    metavar="CMD",
    help="Command (no shell; split like a shell would) whose output is backed up; "
    "if it fails, no snapshot is written.",
)
@pass_app
def backup_command(
    app: App,
    paths: tuple[str, ...],
    client: str | None,
    job: str,
    tags: tuple[str, ...],
    excludes: tuple[str, ...],
    time_: str | None,
    stdin_name: str | None,
    stdin_from: str | None,
) -> int:
    """Back up local paths, and a command's output, into the repository.

    With --stdin-name NAME --stdin-from CMD, the output of CMD is read straight into the
    repository (no temporary file) and stored as /stdin/NAME; a command that exits
    non-zero fails the backup with exit 1 and no snapshot.
    """
    client = client or default_client()
    streams = _stream(stdin_name, stdin_from)
    if not paths and not streams:
        raise UsageError("nothing to back up: give paths, or --stdin-name with --stdin-from")
    for path in paths:
        if not os.path.lexists(path):
            raise UsageError(f"cannot back up {path}: no such file or directory")
    url, _ = app.repository_target()
    processes = app.worker_processes()
    # The directory scanner is forked first, before the storage and cryptography code
    # is even loaded (this module keeps its imports light for that): the tree is
    # listed while the rest loads, the workers fork, the key is derived and the index
    # read. Forks happen before any thread starts.
    with closing(
        start_scan(paths, excludes, streams=bool(streams), process=processes > 0)
    ) as scanner:
        return _backup(
            app, scanner, paths, client, job, tags, excludes, time_, streams, url, processes
        )


def _backup(
    app: App,
    scanner: Scanner,
    paths: tuple[str, ...],
    client: str,
    job: str,
    tags: tuple[str, ...],
    excludes: tuple[str, ...],
    time_: str | None,
    streams: list[CommandStream],
    url: str,
    processes: int,
) -> int:
    from strongroom.cli.progress import BackupProgressLine
    from strongroom.engine.archiver import Archiver, BackupRequest
    from strongroom.engine.files_cache import FilesCache
    from strongroom.engine.fsmeta import display_path
    from strongroom.engine.streams import stream_path
    from strongroom.engine.workers import Workers, file_threads

    request = BackupRequest(
        paths=paths,
        client=client,
        job=job,
        tags=tags,
        excludes=excludes,
        time_ns=parse_time(time_) if time_ else None,
        hostname=socket.gethostname(),
        username=getpass.getuser(),
        program_version=f"strongroom {__version__}",
        streams=streams,
    )
    with (
        Workers(processes, app.clock) as workers,
        app.open_repository(purpose=f"backup of {client}") as repo,
    ):
        lanes = workers.for_backup(repo, url)
        key = hashlib.sha256(
            b"\0".join(sorted(os.fsencode(os.path.abspath(p)) for p in paths))
            + b"".join(b"\0" + stream_path(s.name) for s in streams)
        ).hexdigest()[:16]
        cache = FilesCache(app.cache_dir() / repo.id / f"files-{client}-{job}-{key}")
        progress = BackupProgressLine(app)
        archiver = Archiver(
            repo,
            app.clock,
            cache,
            progress,
            before_commit=app.lock.ensure_valid if app.lock else None,
            scanner=scanner,
            workers=file_threads(lanes),
            lanes=lanes,
        )
        result = archiver.backup(request)
        progress.close()
    snap = result.snapshot
    s = snap.summary
    code = EXIT_WARNINGS if result.warnings else EXIT_SUCCESS
    for note in result.notes:
        app.warn(note)
        app.json_line("warning", message=note)
    for w in result.warnings:
        app.warn(f"{display_path(w.path)}: {w.message}")
        app.json_line("warning", path=w.path, message=w.message)
    if app.json:
        app.json_line(
            "summary",
            snapshot_id=snap.id,
            exit_code=code,
            files_new=s.files_new,
            files_changed=s.files_changed,
            files_unmodified=s.files_unmodified,
            files_read=s.files_read,
            dirs=s.dirs,
            bytes_read=s.bytes_read,
            bytes_total=s.bytes_total,
            bytes_new=s.bytes_new,
            bytes_stored=s.bytes_stored,
            blobs_new=s.blobs_new,
            warnings=len(result.warnings),
            duration_s=s.duration_s,
        )
    else:
        app.result(
            f"snapshot {snap.id[:8]} saved for {client}: "
            f"{s.files_new} new, {s.files_changed} changed, {s.files_unmodified} unchanged files; "
            f"{format_size(s.bytes_read)} read, {format_size(s.bytes_new)} new, "
            f"{format_size(s.bytes_stored)} stored, in {s.duration_s:.1f}s"
        )
        if result.warnings:
            app.result(
                f"{len(result.warnings)} file(s) could not be read completely (listed above)"
            )
    return code


def _stream(name: str | None, command: str | None) -> list[CommandStream]:
    """The stream that --stdin-name and --stdin-from ask for (both or neither)."""
    if name is None and command is None:
        return []
    if name is None or command is None:
        raise UsageError("--stdin-name and --stdin-from go together: give both")
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise UsageError(f"--stdin-from {command!r}: {e}") from None
    if not argv:
        raise UsageError("--stdin-from: the command is empty")
    from strongroom.engine.streams import CommandStream

    return [CommandStream(name, argv)]
