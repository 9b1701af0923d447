"""`strongroom media`: volumes for removable and sequential media (see docs/media.md)."""

from __future__ import annotations

import os
import shlex
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from strongroom.backend import ObjectNotFound, open_backend
from strongroom.cli.context import App, format_size, pass_app
from strongroom.config.units import parse_duration, parse_size
from strongroom.engine.volumes import (
    ExportPlan,
    PlannedVolume,
    VolumeImporter,
    VolumeLabel,
    VolumeOutput,
    WrittenVolume,
    is_valid_label,
    plan_export,
    write_volumes,
)
from strongroom.errors import (
    EXIT_INTEGRITY,
    EXIT_SUCCESS,
    StrongroomError,
    UsageError,
)
from strongroom.repository import Repository, Snapshot
from strongroom.repository.locks import RepositoryLock

if TYPE_CHECKING:
    from strongroom.catalog.media import MediaCatalog, MediaSet, VolumeRecord, VolumeWrite
    from strongroom.config import Config
    from strongroom.config.jobs import Retention

LOCATIONS = ("onsite", "offsite", "vault")
# "last week" and friends, for --since.
SPANS = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 31 * 86400, "year": 366 * 86400}


@click.group("media")
def media_command() -> None:
    """Volumes for removable and sequential media: label, export, import, list, move,
    recycle, due. A volume is a tar archive of repository objects (docs/media.md)."""


# --- label ----------------------------------------------------------------------------


@media_command.command("label")
@click.argument("labels", nargs=-1, required=True)
@click.option("--location", type=click.Choice(LOCATIONS), default="onsite", show_default=True)
@pass_app
def label_command(app: App, labels: tuple[str, ...], location: str) -> None:
    """Record new blank volumes (removable media) by their labels."""
    _check_labels(labels)
    with _media_catalog(app) as media:
        records = media.label(list(labels), location)
    if app.json:
        app.emit_json([volume_json(v) for v in records])
        return
    for v in records:
        app.result(f"volume {v.label} labelled, blank, {v.location}")


# --- export ---------------------------------------------------------------------------


@media_command.command("export")
@click.argument("snapshots", nargs=-1)
@click.option("--client", help="Only this client's snapshots.")
@click.option("--job", help="Only this job's snapshots.")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag.")
@click.option("--since", metavar="DUR|TIME", help='Only snapshots since: "7d", "last week", ISO.')
@click.option(
    "--to",
    "to",
    type=click.Path(),
    help="A directory (volumes are written as LABEL.vol), or a tape device or FIFO "
    "(volumes are written to it one after the other).",
)
@click.option("--stdout", "to_stdout", is_flag=True, help="Write the (single) volume to stdout.")
@click.option("--volume-size", default="100MiB", show_default=True, help="Largest volume.")
@click.option("--label", "labels", multiple=True, help="Label of the next volume (repeatable).")
@click.option("--expires", metavar="DATE|DUR", help="When the set may be recycled.")
@click.option(
    "--change-command",
    metavar="CMD",
    help="Run before each volume after the first, to load the next medium on a device.",
)
@pass_app
def export_command(
    app: App,
    snapshots: tuple[str, ...],
    client: str | None,
    job: str | None,
    tags: tuple[str, ...],
    since: str | None,
    to: str | None,
    to_stdout: bool,
    volume_size: str,
    labels: tuple[str, ...],
    expires: str | None,
    change_command: str | None,
) -> None:
    """Write snapshots (ids, or --client/--job/--tag/--since) to volumes of at most
    --volume-size: every object they need, verified, written strictly sequentially.

    Volumes are named by --label in order; more are named SETID-NNN. The set's
    expiry is --expires, or else the latest of its snapshots' time plus the longest
    period of their job's retention (hourly/daily/weekly/monthly/yearly/within).
    """
    if (to is None) == (not to_stdout):
        raise UsageError("give --to DIR|DEVICE or --stdout")
    if to_stdout and app.json:
        raise UsageError("--stdout carries the volume: it cannot carry --json output as well")
    try:
        size = parse_size(volume_size)
    except ValueError as e:
        raise UsageError(f"--volume-size: {e}") from None
    _check_labels(labels)
    now = datetime.fromtimestamp(app.clock.now_ns() / 1e9, UTC)
    report = app.info if to_stdout else app.result
    with app.open_repository(purpose="media export") as repo:
        chosen = _choose(app, repo, snapshots, client, job, tags, since)
        expires_at = _expiry(app, chosen, expires, now)
        set_id = uuid.uuid4().hex
        plan = plan_export(
            repo,
            chosen,
            size,
            lambda n: labels[n - 1] if n <= len(labels) else f"{set_id[:8]}-{n:03d}",
            app.clock.now_ns(),
            set_id,
        )
        outputs = _Outputs(app, to, plan, change_command)
        with _media_catalog(app) as media:
            media.check_writable(plan.labels)
            written = outputs.write(repo, plan)
            media.record_set(_media_set(plan, repo, chosen, expires_at, app), _writes(written))
    if labels[len(plan.volumes) :]:
        app.warn(f"label(s) not needed: {', '.join(labels[len(plan.volumes) :])}")
    if app.json:
        app.json_line(
            "summary",
            exit_code=EXIT_SUCCESS,
            set_id=plan.set_id,
            repository_id=plan.repository_id,
            snapshots=list(plan.snapshots),
            expires_at=_iso(expires_at),
            objects=plan.objects,
            bytes=plan.total_bytes,
            volumes=[
                {
                    "label": w.label,
                    "volume_id": w.volume_id,
                    "sequence": w.sequence,
                    "bytes": w.size,
                    "status": "full" if w.full else "exported",
                    "path": outputs.paths.get(w.sequence),
                }
                for w in written
            ],
        )
        return
    report(
        f"set {plan.set_id[:8]}: {len(plan.snapshots)} snapshot(s), {plan.objects} objects "
        f"({format_size(plan.total_bytes)}) in {len(written)} volume(s); expires "
        f"{expires_at:%Y-%m-%d}"
    )
    for w in written:
        where = outputs.paths.get(w.sequence) or "stdout"
        report(f"  {w.label}  {w.sequence} of {len(written)}  {format_size(w.size):>10}  {where}")


def _choose(
    app: App,
    repo: Repository,
    specs: tuple[str, ...],
    client: str | None,
    job: str | None,
    tags: tuple[str, ...],
    since: str | None,
) -> list[Snapshot]:
    snaps = app.choose_snapshots(repo, specs, client, job, tags)
    if since is not None:
        since_ns = parse_since(since, app.clock.now_ns())
        snaps = [s for s in snaps if s.time_ns >= since_ns]
    if not snaps:
        raise UsageError("no snapshot matches: there is nothing to export")
    return sorted(snaps, key=lambda s: (s.time_ns, s.id))


def parse_since(text: str, now_ns: int) -> int:
    """--since: "last week" (hour, day, week, month, year), a duration ("7d"), or an
    ISO 8601 time. Returns nanoseconds since the epoch."""
    words = text.strip().lower().split()
    if len(words) == 2 and words[0] == "last" and words[1] in SPANS:
        return now_ns - SPANS[words[1]] * 1_000_000_000
    try:
        return now_ns - parse_duration(text) * 1_000_000_000
    except ValueError:
        pass
    from strongroom.cli.commands.backup import parse_time

    try:
        return parse_time(text)
    except UsageError:
        raise UsageError(
            f"--since {text!r}: use a duration (7d), 'last week' or an ISO 8601 time"
        ) from None


def retention_horizon(retention: Retention) -> int | None:
    """The longest period a retention policy may keep a snapshot, in seconds; None when
    it keeps snapshots only by count (``last``) or not at all."""
    periods = [
        count * unit
        for count, unit in (
            (retention.hourly, 3600),
            (retention.daily, 86400),
            (retention.weekly, 7 * 86400),
            (retention.monthly, 31 * 86400),
            (retention.yearly, 366 * 86400),
            (retention.within, 1),
        )
        if count
    ]
    return max(periods) if periods else None


def _expiry(app: App, snaps: list[Snapshot], expires: str | None, now: datetime) -> datetime:
    """--expires, or the latest (snapshot time + its job's retention horizon)."""
    if expires is not None:
        return parse_expires(expires, now)
    config = app.load_config_if_any()
    latest: datetime | None = None
    unknown: set[str] = set()
    for snap in snaps:
        horizon = _horizon(config, snap)
        if horizon is None:
            unknown.add(f"{snap.client}/{snap.job}")
            continue
        until = snap.time + timedelta(seconds=horizon)
        latest = until if latest is None else max(latest, until)
    if unknown or latest is None:
        raise UsageError(
            f"no retention period is known for {', '.join(sorted(unknown))}, so the "
            "volumes' expiry cannot be derived",
            hint="give --expires DATE or DURATION (for example 90d)",
        )
    return latest


def _horizon(config: Config | None, snap: Snapshot) -> int | None:
    if config is None or snap.client not in config.clients:
        return None
    if snap.job not in config.job_names(snap.client):
        return None
    return retention_horizon(config.job(snap.client, snap.job).retention)


def parse_expires(text: str, now: datetime) -> datetime:
    """A date or time (ISO 8601; a date alone is midnight UTC), or a duration from now."""
    try:
        return now + timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--expires {text!r}: use a date (2027-01-31) or a duration (90d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class _FileVolume:
    """A volume written to a file descriptor: whole records, never a seek."""

    def __init__(self, fd: int, sync: bool) -> None:
        self.fd = fd
        self.sync = sync

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        try:
            if self.sync:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)


class _StreamVolume:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def write(self, data: bytes | memoryview) -> None:
        self.stream.write(data)

    def close(self) -> None:
        self.stream.flush()


class _Outputs:
    """Where the volumes go: files in a directory, a device or FIFO in turn, or stdout."""

    def __init__(self, app: App, to: str | None, plan: ExportPlan, change_command: str | None):
        self.app = app
        self.to = to
        self.plan = plan
        self.change_command = change_command
        self.paths: dict[int, str] = {}
        self.created: list[str] = []
        self.kind = "stdout"
        if to is not None:
            try:
                mode = os.stat(to).st_mode
            except OSError as e:
                raise UsageError(f"--to {to}: {e.strerror}") from None
            if stat.S_ISDIR(mode):
                self.kind = "dir"
            elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                self.kind = "fifo" if stat.S_ISFIFO(mode) else "device"
            else:
                raise UsageError(f"--to {to}: not a directory, a FIFO or a device")
        count = len(plan.volumes)
        if self.kind == "stdout" and count > 1:
            raise UsageError(
                f"the set needs {count} volumes; stdout holds one",
                hint="raise --volume-size, or write to --to DIR or a device",
            )
        if self.kind in ("device", "fifo") and count > 1 and change_command is None:
            # Without a pause a FIFO's reader cannot tell where one volume ends.
            raise UsageError(
                f"the set needs {count} volumes; a device or FIFO takes one at a time",
                hint="give --change-command to load the next medium, or raise --volume-size",
            )
        if self.kind == "dir":
            assert to is not None
            for volume in plan.volumes:
                path = os.path.join(to, f"{volume.label}.vol")
                if os.path.lexists(path):
                    raise UsageError(f"{path} exists already; volumes are never overwritten")

    def write(self, repo: Repository, plan: ExportPlan) -> list[WrittenVolume]:
        try:
            return write_volumes(repo.backend, plan, self.open, self.done)
        except BaseException:
            for path in self.created:  # incomplete volumes must not pass for a set
                Path(path).unlink(missing_ok=True)
            raise

    def open(self, volume: PlannedVolume) -> VolumeOutput:
        if self.kind == "stdout":
            return _StreamVolume(sys.stdout.buffer)
        assert self.to is not None
        if self.kind == "dir":
            path = os.path.join(self.to, f"{volume.label}.vol")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                fd = os.open(path, flags, 0o644)
            except OSError as e:
                raise UsageError(f"cannot create {path}: {e.strerror}") from None
            self.created.append(path)
            self.paths[volume.sequence] = path
            return _FileVolume(fd, sync=True)
        if volume.sequence > 1 and self.change_command is not None:
            self._change(volume)
        try:
            fd = os.open(self.to, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise UsageError(f"cannot write to {self.to}: {e.strerror}") from None
        self.paths[volume.sequence] = self.to
        return _FileVolume(fd, sync=False)

    def done(self, written: WrittenVolume) -> None:
        self.app.info(f"volume {written.label} ({written.sequence} of {len(self.plan.volumes)}) "
                      f"written: {format_size(written.size)}")  # fmt: skip
        self.app.json_line(
            "status", action="volume-written", label=written.label, sequence=written.sequence,
            bytes=written.size,
        )  # fmt: skip

    def _change(self, volume: PlannedVolume) -> None:
        assert self.change_command is not None
        env = dict(os.environ)
        env.update(
            STRONGROOM_VOLUME_LABEL=volume.label,
            STRONGROOM_VOLUME_SEQUENCE=str(volume.sequence),
            STRONGROOM_VOLUME_TOTAL=str(len(self.plan.volumes)),
        )
        self.app.info(f"loading volume {volume.label}: {self.change_command}")
        proc = subprocess.run(shlex.split(self.change_command), env=env, check=False)
        if proc.returncode != 0:
            raise StrongroomError(
                f"--change-command exited with {proc.returncode} before volume {volume.label}"
            )


def _media_set(
    plan: ExportPlan, repo: Repository, snaps: list[Snapshot], expires_at: datetime, app: App
) -> MediaSet:
    from strongroom.catalog.media import MediaSet, SetSnapshot

    return MediaSet(
        id=plan.set_id,
        repository_id=repo.id,
        repository=app.require_repo_url(),
        created_at=datetime.fromtimestamp(plan.created_ns / 1e9, UTC),
        expires_at=expires_at,
        snapshots=[SetSnapshot(s.id, s.client, s.job, s.time) for s in snaps],
    )


def _writes(written: list[WrittenVolume]) -> list[VolumeWrite]:
    from strongroom.catalog.media import VolumeWrite

    return [VolumeWrite(w.label, w.volume_id, w.sequence, w.size, w.full) for w in written]


# --- import ---------------------------------------------------------------------------


@media_command.command("import")
@click.argument("volumes", nargs=-1, required=True)
@pass_app
def import_command(app: App, volumes: tuple[str, ...]) -> int:
    """Rebuild a repository (--repo) from the volumes of one set, given in any order.

    Into an empty directory it recreates the repository, opened by the original
    password; into the repository the volumes came from it adds what is missing.
    Every object is verified. A damaged or truncated volume is exit 13.
    """
    url, password = app.repository_target()
    backend = open_backend(url)
    lock: RepositoryLock | None = None
    try:
        try:
            backend.stat("config")
        except ObjectNotFound:
            pass  # a new repository: nobody else can be using it
        else:
            lock = RepositoryLock(
                backend,
                app.clock,
                exclusive=False,
                hostname=socket.gethostname(),
                purpose="media import",
            ).acquire()
            lock.start_refreshing()
        importer = VolumeImporter(
            backend,
            password(),
            on_volume=lambda v: _volume_read(app, v),
            before_commit=None if lock is None else lock.ensure_valid,
        )
        result = importer.run(list(volumes))
    finally:
        if lock is not None:
            lock.release()
        backend.close()
    code = EXIT_INTEGRITY if result.errors else EXIT_SUCCESS
    for err in result.errors:
        click.echo(f"error: {err}", err=True)
        app.json_line("error", message=err)
    if app.json:
        app.json_line(
            "summary",
            exit_code=code,
            set_id=result.set_id,
            repository_id=result.repository_id,
            created=result.created,
            volumes=result.volumes,
            objects_written=result.objects_written,
            objects_present=result.objects_present,
            bytes_written=result.bytes_written,
            packs_verified=result.packs_verified,
            blobs_verified=result.blobs_verified,
            snapshots_imported=result.snapshots_imported,
            snapshots_present=result.snapshots_present,
        )
        return code
    app.result(
        f"set {result.set_id[:8]}: {len(result.volumes)} volume(s) read into "
        f"{'a new' if result.created else 'the'} repository {result.repository_id[:8]} at "
        f"{url}; {result.objects_written} objects written ({format_size(result.bytes_written)}), "
        f"{result.objects_present} already there; {result.packs_verified} packs "
        f"({result.blobs_verified} blobs) verified; {len(result.snapshots_imported)} "
        f"snapshot(s) imported, {len(result.snapshots_present)} already there"
    )
    return code


def _volume_read(app: App, label: VolumeLabel) -> None:
    app.info(f"read {label.what}")
    app.json_line("status", action="volume-read", label=label.label, sequence=label.sequence)


# --- list, move, recycle, due ---------------------------------------------------------


@media_command.command("list")
@pass_app
def list_command(app: App) -> None:
    """List the volumes the catalog knows."""
    with _media_catalog(app) as media:
        records = media.volumes()
    if app.json:
        app.emit_json([volume_json(v) for v in records])
        return
    _table(app, records)
    app.result(f"{len(records)} volume(s)")


@media_command.command("move")
@click.argument("labels", nargs=-1, required=True)
@click.option("--to", "to", type=click.Choice(LOCATIONS), required=True)
@pass_app
def move_command(app: App, labels: tuple[str, ...], to: str) -> None:
    """Record that volumes were moved (off site, back on site, to a vault)."""
    with _media_catalog(app) as media:
        records = media.move(list(labels), to)
    if app.json:
        app.emit_json([volume_json(v) for v in records])
        return
    for v in records:
        app.result(f"volume {v.label} is now {v.location}")


@media_command.command("recycle")
@click.argument("label")
@click.option("--force", is_flag=True, help="Even before the volume's set expires.")
@pass_app
def recycle_command(app: App, label: str, force: bool) -> None:
    """Mark a volume free to be written again: only once its set has expired."""
    with _media_catalog(app) as media:
        before = media.recycle(label, force=force)
        after = media.volume(label)
    if before.total and before.total > 1:
        app.warn(f"set {(before.set_id or '')[:8]} is incomplete without volume {label}")
    if app.json:
        app.emit_json(volume_json(after))
        return
    app.result(
        f"volume {label} recycled (held set {(before.set_id or '')[:8]}, "
        f"{len(before.snapshots)} snapshot(s))"
    )


@media_command.command("due")
@pass_app
def due_command(app: App) -> None:
    """Volumes to send off site (written, still on site), and volumes that may be
    recycled (their set has expired). With --json, for an external media manager."""
    config = app.load_config_if_any()
    with _media_catalog(app, config) as media:
        offsite, recyclable = media.due()
        now = media.now()
        if config is not None and (offsite or recyclable):
            _notify_due(app, config, media, offsite, recyclable)
    if app.json:
        app.emit_json(
            {
                "time": _iso(now),
                "send_offsite": [volume_json(v) for v in offsite],
                "recyclable": [volume_json(v) for v in recyclable],
            }
        )
        return
    app.result(f"{len(offsite)} volume(s) to send off site:")
    _table(app, offsite)
    app.result(f"{len(recyclable)} volume(s) that may be recycled:")
    _table(app, recyclable)


def _notify_due(
    app: App,
    config: Config,
    media: MediaCatalog,
    offsite: list[VolumeRecord],
    recyclable: list[VolumeRecord],
) -> None:
    """A ``media.due`` event, once a day for the same volumes."""
    from strongroom.cli.commands.run import report_deliveries
    from strongroom.jobs.notifier import Notifier
    from strongroom.notify import Event
    from strongroom.notify.event import derived_id

    notifier = Notifier(config, media.catalog, app.clock, dict(os.environ))
    now = notifier.now()
    send = [v.label for v in offsite]
    recycle = [v.label for v in recyclable]
    event = Event(
        name="media.due",
        time=now,
        message=f"media: {len(send)} volume(s) to send off site, {len(recycle)} to recycle",
        details={"send_offsite": send, "recyclable": recycle},
        id=derived_id("media.due", ",".join(send), ",".join(recycle), f"{now:%Y-%m-%d}"),
    )
    report_deliveries(app, notifier.emit(event))


# --- shared ---------------------------------------------------------------------------


@contextmanager
def _media_catalog(app: App, config: Config | None = None) -> Iterator[MediaCatalog]:
    from strongroom.catalog.media import MediaCatalog

    catalog = app.open_catalog(config if config is not None else app.load_config_if_any())
    try:
        yield MediaCatalog(catalog)
    finally:
        catalog.close()


def _check_labels(labels: tuple[str, ...]) -> None:
    bad = [label for label in labels if not is_valid_label(label)]
    if bad:
        raise UsageError(
            f"invalid volume label(s): {', '.join(map(repr, bad))}",
            hint="use up to 64 letters, digits, '.', '_' and '-'",
        )
    if len(set(labels)) != len(labels):
        raise UsageError("a volume label is given twice")


def volume_json(v: VolumeRecord) -> dict[str, Any]:
    return {
        "label": v.label,
        "status": v.status,
        "location": v.location,
        "volume_id": v.volume_id,
        "set_id": v.set_id,
        "sequence": v.sequence,
        "total": v.total,
        "bytes": v.size,
        "repository_id": v.repository_id,
        "repository": v.repository,
        "labeled_at": _iso(v.labeled_at),
        "written_at": _iso(v.written_at),
        "moved_at": _iso(v.moved_at),
        "recycled_at": _iso(v.recycled_at),
        "expires_at": _iso(v.expires_at),
        "snapshots": list(v.snapshots),
    }


def _table(app: App, records: list[VolumeRecord]) -> None:
    for v in records:
        seq = f"{v.sequence}/{v.total}" if v.sequence else "-"
        expires = f"{v.expires_at:%Y-%m-%d}" if v.expires_at else "-"
        app.result(
            f"  {v.label:20} {v.status:9} {v.location:8} {(v.set_id or '-')[:8]:8} {seq:>6} "
            f"expires {expires:10} {format_size(v.size):>10}  {len(v.snapshots)} snapshot(s)"
        )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
