"""Media volumes in the catalog: labels, the sets written on them, where they are kept,
and when they may be written again.

A volume is known by its label (the sticker on a tape, or a file name). Its status is
``blank`` (labelled, never written), ``full`` (holds part of a set, and the set goes on
to another volume), ``exported`` (holds the last or only volume of a set) or
``recycled`` (may be written again). Its location is ``onsite``, ``offsite`` or
``vault``. A set expires at the time recorded by ``media export``; every volume of a
set holds every snapshot of the set (any pack may be on any volume), so they expire
together.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from strongroom.catalog import schema as t
from strongroom.catalog.catalog import Catalog
from strongroom.errors import UsageError

BLANK, FULL, EXPORTED, RECYCLED = "blank", "full", "exported", "recycled"
IN_USE = (FULL, EXPORTED)
ONSITE, OFFSITE, VAULT = "onsite", "offsite", "vault"
LOCATIONS = (ONSITE, OFFSITE, VAULT)


@dataclass(frozen=True)
class VolumeRecord:
    label: str
    status: str
    location: str
    labeled_at: datetime
    volume_id: str | None = None
    set_id: str | None = None
    sequence: int | None = None
    total: int | None = None  # volumes in its set
    size: int = 0  # bytes written
    written_at: datetime | None = None
    moved_at: datetime | None = None
    recycled_at: datetime | None = None
    expires_at: datetime | None = None
    repository_id: str | None = None
    repository: str | None = None
    snapshots: tuple[str, ...] = ()

    @property
    def in_use(self) -> bool:
        return self.status in IN_USE

    def expired(self, now: datetime) -> bool:
        return self.in_use and self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class SetSnapshot:
    id: str
    client: str
    job: str
    time: datetime


@dataclass(frozen=True)
class MediaSet:
    id: str
    repository_id: str
    repository: str  # the name or location it was exported from, as given
    created_at: datetime
    expires_at: datetime
    snapshots: Sequence[SetSnapshot]


@dataclass(frozen=True)
class VolumeWrite:
    """One volume as ``media export`` wrote it."""

    label: str
    volume_id: str
    sequence: int
    size: int
    full: bool  # another volume of the set follows


class MediaCatalog:
    """The media tables of one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def now(self) -> datetime:
        return self._catalog._now()

    # --- labels ---------------------------------------------------------------------

    def label(self, labels: Sequence[str], location: str = ONSITE) -> list[VolumeRecord]:
        """Record new blank volumes (a recycled one becomes blank again)."""
        _check_location(location)
        now = self.now()
        v = t.media_volumes

        def write(conn: Connection) -> None:
            statuses = self._statuses(conn, labels)
            taken = [f"{label} ({statuses[label]})" for label in labels
                     if statuses.get(label, RECYCLED) != RECYCLED]  # fmt: skip
            if taken:
                raise UsageError(
                    f"already labelled: {', '.join(taken)}",
                    hint="`strongroom media recycle` a volume before labelling it again",
                )
            for label in dict.fromkeys(labels):
                values = {"status": BLANK, "location": location, "labeled_at": now,
                          "volume_id": None, "set_id": None, "sequence": None, "bytes": 0,
                          "written_at": None, "moved_at": None}  # fmt: skip
                if label in statuses:
                    conn.execute(sa.update(v).where(v.c.label == label).values(**values))
                else:
                    conn.execute(sa.insert(v).values(label=label, **values))

        self._catalog._write(write)
        return self.volumes(labels)

    def check_writable(self, labels: Sequence[str]) -> None:
        """Raise UsageError when any of ``labels`` holds a set that is still in use."""
        statuses = self._catalog._read(lambda conn: self._statuses(conn, labels))
        _refuse_in_use(labels, statuses)

    # --- sets -----------------------------------------------------------------------

    def record_set(self, media_set: MediaSet, volumes: Sequence[VolumeWrite]) -> None:
        """Record what one export wrote: the set, its snapshots and its volumes."""
        now = self.now()
        v = t.media_volumes
        labels = [vol.label for vol in volumes]

        def write(conn: Connection) -> None:
            statuses = self._statuses(conn, labels)
            _refuse_in_use(labels, statuses)
            conn.execute(
                sa.insert(t.media_sets).values(
                    id=media_set.id,
                    repository_id=media_set.repository_id,
                    repository=media_set.repository,
                    created_at=media_set.created_at,
                    expires_at=media_set.expires_at,
                    volumes=len(volumes),
                )
            )
            if media_set.snapshots:
                conn.execute(
                    sa.insert(t.media_set_snapshots),
                    [{"set_id": media_set.id, "snapshot_id": s.id, "client": s.client,
                      "job": s.job, "time": s.time} for s in media_set.snapshots],
                )  # fmt: skip
            for vol in volumes:
                values = {"status": FULL if vol.full else EXPORTED, "volume_id": vol.volume_id,
                          "set_id": media_set.id, "sequence": vol.sequence, "bytes": vol.size,
                          "written_at": now, "recycled_at": None}  # fmt: skip
                if vol.label in statuses:
                    conn.execute(sa.update(v).where(v.c.label == vol.label).values(**values))
                else:
                    conn.execute(
                        sa.insert(v).values(
                            label=vol.label, location=ONSITE, labeled_at=now, **values
                        )
                    )

        self._catalog._write(write)

    # --- volumes --------------------------------------------------------------------

    def volumes(self, labels: Collection[str] | None = None) -> list[VolumeRecord]:
        """The volumes (all, or those labelled ``labels``), by label."""
        where = None if labels is None else t.media_volumes.c.label.in_(list(labels))
        return self._select(where)

    def volume(self, label: str) -> VolumeRecord:
        found = self.volumes([label])
        if not found:
            raise UsageError(f"no volume labelled {label!r}", hint="see `strongroom media list`")
        return found[0]

    def move(self, labels: Sequence[str], location: str) -> list[VolumeRecord]:
        """Record that the volumes are now at ``location``."""
        _check_location(location)
        now = self.now()
        v = t.media_volumes

        def write(conn: Connection) -> None:
            unknown = [label for label in labels if label not in self._statuses(conn, labels)]
            if unknown:
                raise UsageError(f"no volume labelled {', '.join(unknown)}")
            conn.execute(
                sa.update(v)
                .where(v.c.label.in_(list(labels)))
                .values(location=location, moved_at=now)
            )

        self._catalog._write(write)
        return self.volumes(labels)

    def recycle(self, label: str, *, force: bool = False) -> VolumeRecord:
        """Mark a volume free to be written again: only once its set expired, unless
        ``force``. Returns the volume as it was before."""
        now = self.now()
        v = t.media_volumes
        before = self.volume(label)

        def write(conn: Connection) -> None:
            status = self._statuses(conn, [label]).get(label)
            if status not in IN_USE:
                raise UsageError(f"volume {label} is {status}: there is nothing to recycle")
            if not force and not before.expired(now):
                until = "ever" if before.expires_at is None else f"{before.expires_at:%Y-%m-%d}"
                raise UsageError(
                    f"volume {label} holds set {(before.set_id or '?')[:8]} "
                    f"({len(before.snapshots)} snapshot(s)) until {until}",
                    hint="wait until it expires (see `strongroom media due`), or use --force",
                )
            conn.execute(
                sa.update(v)
                .where(v.c.label == label)
                .values(status=RECYCLED, volume_id=None, set_id=None, sequence=None, bytes=0,
                        recycled_at=now)
            )  # fmt: skip

        self._catalog._write(write)
        return before

    def due(self) -> tuple[list[VolumeRecord], list[VolumeRecord]]:
        """(volumes written and still on site, to send off site; volumes whose set has
        expired, which may be recycled)."""
        v, s = t.media_volumes, t.media_sets
        in_use = v.c.status.in_(IN_USE)
        offsite = self._select(sa.and_(in_use, v.c.location == ONSITE))
        recyclable = self._select(sa.and_(in_use, s.c.expires_at <= self.now()))
        return offsite, recyclable

    # --- helpers --------------------------------------------------------------------

    def _statuses(self, conn: Connection, labels: Collection[str]) -> dict[str, str]:
        v = t.media_volumes
        rows = conn.execute(sa.select(v.c.label, v.c.status).where(v.c.label.in_(list(labels))))
        return {r.label: r.status for r in rows}

    def _select(self, where: sa.ColumnElement[bool] | None) -> list[VolumeRecord]:
        v, s, ss = t.media_volumes, t.media_sets, t.media_set_snapshots
        query = (
            sa.select(v, s.c.volumes, s.c.expires_at, s.c.repository_id, s.c.repository)
            .select_from(v.outerjoin(s, v.c.set_id == s.c.id))
            .order_by(v.c.label)
        )
        if where is not None:
            query = query.where(where)

        def read(conn: Connection) -> list[VolumeRecord]:
            rows = list(conn.execute(query))
            set_ids = sorted({r.set_id for r in rows if r.set_id is not None})
            members: dict[str, list[str]] = {}
            if set_ids:
                found = conn.execute(
                    sa.select(ss.c.set_id, ss.c.snapshot_id)
                    .where(ss.c.set_id.in_(set_ids))
                    .order_by(ss.c.time, ss.c.snapshot_id)
                )
                for set_id, snapshot_id in found:
                    members.setdefault(set_id, []).append(snapshot_id)
            return [_volume(r, members.get(r.set_id, [])) for r in rows]

        return self._catalog._read(read)


def _volume(row: Any, snapshots: list[str]) -> VolumeRecord:
    return VolumeRecord(
        label=row.label,
        status=row.status,
        location=row.location,
        labeled_at=row.labeled_at,
        volume_id=row.volume_id,
        set_id=row.set_id,
        sequence=row.sequence,
        total=row.volumes,
        size=row.bytes,
        written_at=row.written_at,
        moved_at=row.moved_at,
        recycled_at=row.recycled_at,
        expires_at=row.expires_at,
        repository_id=row.repository_id,
        repository=row.repository,
        snapshots=tuple(snapshots),
    )


def _check_location(location: str) -> None:
    if location not in LOCATIONS:
        raise UsageError(f"unknown location {location!r} (use {', '.join(LOCATIONS)})")


def _refuse_in_use(labels: Sequence[str], statuses: dict[str, str]) -> None:
    busy = [label for label in labels if statuses.get(label) in IN_USE]
    if busy:
        raise UsageError(
            f"volume {', '.join(busy)} still hold(s) a set",
            hint="recycle it first (`strongroom media recycle`), or choose other labels",
        )
