"""The event outbox: every event is stored here before any sink sees it.

One ``events`` row per event (its id is the idempotency key a sink sees, so storing
the same id twice is a no-op) and one ``event_deliveries`` row per (event, sink). A
deliverer *claims* a due delivery by moving its ``next_attempt_at`` forward in a
conditional update, so two directors delivering at once rarely send the same event
twice; when one dies mid-send the claim simply expires and the event is sent again
(at least once, never zero times).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from strongroom.catalog import schema as t
from strongroom.catalog.catalog import Catalog

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class EventRecord:
    id: str
    time: datetime
    name: str
    client: str | None
    job: str | None
    run_id: str | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    event_id: str
    sink: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None


class Outbox:
    """The outbox tables of one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def add(self, event: EventRecord, sinks: Sequence[str]) -> bool:
        """Store ``event`` with a pending delivery per sink, in one transaction.

        Returns False (and changes nothing) when an event with this id is stored
        already: emitting is idempotent.
        """
        c = self._catalog

        def write(conn: Connection) -> bool:
            inserted = conn.execute(
                c._insert(t.events)
                .values(
                    id=event.id,
                    time=event.time,
                    name=event.name,
                    client=event.client,
                    job=event.job,
                    run_id=event.run_id,
                    payload=event.payload,
                )
                .on_conflict_do_nothing(index_elements=[t.events.c.id])
            )
            if inserted.rowcount == 0:
                return False
            if sinks:
                conn.execute(
                    sa.insert(t.event_deliveries),
                    [
                        {"event_id": event.id, "sink": sink, "state": PENDING,
                         "attempts": 0, "next_attempt_at": event.time}
                        for sink in dict.fromkeys(sinks)
                    ],
                )  # fmt: skip
            return True

        return c._write(write)

    def claim_due(
        self,
        now: datetime,
        lease: timedelta,
        *,
        limit: int = 100,
        event_id: str | None = None,
        sink: str | None = None,
        ignore_backoff: bool = False,
    ) -> list[tuple[EventRecord, Delivery]]:
        """Pending deliveries due at ``now``, each claimed for ``lease``: until then no
        other deliverer picks it up. Oldest events first."""
        d = t.event_deliveries
        query = (
            sa.select(d, t.events)
            .join(t.events, t.events.c.id == d.c.event_id)
            .where(d.c.state == PENDING)
            .order_by(t.events.c.time, d.c.event_id, d.c.sink)
            .limit(limit)
        )
        if not ignore_backoff:
            query = query.where(d.c.next_attempt_at <= now)
        if event_id is not None:
            query = query.where(d.c.event_id == event_id)
        if sink is not None:
            query = query.where(d.c.sink == sink)

        def write(conn: Connection) -> list[tuple[EventRecord, Delivery]]:
            claimed = []
            for row in conn.execute(query).all():
                taken = conn.execute(
                    sa.update(d)
                    .where(
                        d.c.event_id == row.event_id,
                        d.c.sink == row.sink,
                        d.c.state == PENDING,
                        d.c.next_attempt_at == row.next_attempt_at,
                    )
                    .values(next_attempt_at=now + lease)
                )
                if taken.rowcount == 1:
                    claimed.append((_event(row), _delivery(row)))
            return claimed

        return self._catalog._write(write)

    def delivered(self, event_id: str, sink: str, at: datetime) -> None:
        d = t.event_deliveries
        self._catalog._write(
            lambda conn: conn.execute(
                sa.update(d)
                .where(d.c.event_id == event_id, d.c.sink == sink)
                .values(
                    state=DELIVERED,
                    attempts=d.c.attempts + 1,
                    delivered_at=at,
                    next_attempt_at=None,
                )
            )
        )

    def attempt_failed(
        self, event_id: str, sink: str, error: str, next_attempt_at: datetime | None
    ) -> None:
        """Record a failed attempt; with no next attempt the delivery is given up."""
        d = t.event_deliveries
        state = PENDING if next_attempt_at is not None else FAILED
        self._catalog._write(
            lambda conn: conn.execute(
                sa.update(d)
                .where(d.c.event_id == event_id, d.c.sink == sink)
                .values(
                    state=state,
                    attempts=d.c.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    last_error=error[:1000],
                )
            )
        )

    def events(
        self,
        *,
        since: datetime | None = None,
        client: str | None = None,
        name: str | None = None,
        pending_only: bool = False,
        limit: int = 1000,
    ) -> list[tuple[EventRecord, list[Delivery]]]:
        """Newest events first, each with its deliveries."""
        e, d = t.events, t.event_deliveries
        query = sa.select(e).order_by(e.c.time.desc(), e.c.id).limit(limit)
        if since is not None:
            query = query.where(e.c.time >= since)
        if client is not None:
            query = query.where(e.c.client == client)
        if name is not None:
            query = query.where(e.c.name == name)
        if pending_only:
            query = query.where(sa.exists().where(d.c.event_id == e.c.id, d.c.state != DELIVERED))

        def read(conn: Connection) -> list[tuple[EventRecord, list[Delivery]]]:
            found = [_event(row) for row in conn.execute(query)]
            by_event: dict[str, list[Delivery]] = {ev.id: [] for ev in found}
            ids = list(by_event)
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    sa.select(d)
                    .where(d.c.event_id.in_(ids[start : start + 500]))
                    .order_by(d.c.sink)
                )
                for row in rows:
                    by_event[row.event_id].append(_delivery(row))
            return [(ev, by_event[ev.id]) for ev in found]

        return self._catalog._read(read)


def _event(row: sa.Row[Any]) -> EventRecord:
    return EventRecord(
        id=row.id,
        time=row.time,
        name=row.name,
        client=row.client,
        job=row.job,
        run_id=row.run_id,
        payload=row.payload,
    )


def _delivery(row: sa.Row[Any]) -> Delivery:
    return Delivery(
        event_id=row.event_id,
        sink=row.sink,
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
    )
