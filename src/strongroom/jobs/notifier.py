"""Events from the fleet to the organisation's alerting: outbox first, then the sinks.

``emit`` stores the event and one pending delivery per interested sink in the catalog
in one transaction, and only then tries to deliver it; whatever is not delivered stays
pending and is retried with backoff by later `run`s and by `strongroom events
deliver` (which a scheduler may run every few minutes). A sink that is down loses
nothing: its events wait in the outbox until it answers.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from strongroom.catalog import Catalog
from strongroom.catalog.outbox import Delivery, EventRecord, Outbox
from strongroom.clock import Clock
from strongroom.config import (
    AppriseSink,
    CommandSink,
    Config,
    EmailSink,
    Sink,
    SyslogSink,
    WebhookSink,
)
from strongroom.errors import UsageError
from strongroom.jobs.environment import for_sinks
from strongroom.notify import (
    AppriseSender,
    CommandSender,
    DeliveryFailed,
    EmailSender,
    Event,
    Sender,
    SyslogSender,
    WebhookSender,
)
from strongroom.notify.event import derived_id

FIRST_RETRY_S = 30.0
MAX_RETRY_S = 3600.0
CLAIM_S = 300.0  # another deliverer leaves a claimed delivery alone this long


def retry_delay(attempts: int, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 30 s doubling up
    to an hour, with ±20% jitter so a sink coming back is not hit by everyone at once."""
    base = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, attempts - 1))
    return float(base * (rng or random).uniform(0.8, 1.2))


@dataclass
class DeliveryReport:
    delivered: list[tuple[str, str]] = field(default_factory=list)  # (event id, sink)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (+ error)
    given_up: list[tuple[str, str, str]] = field(default_factory=list)

    def merge(self, other: DeliveryReport) -> None:
        self.delivered += other.delivered
        self.failed += other.failed
        self.given_up += other.given_up


@dataclass
class Notifier:
    config: Config
    catalog: Catalog
    clock: Clock
    env: Mapping[str, str]

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.catalog)
        # What `emit` could not deliver at once (it stays pending), for the command
        # that emitted to report: runs on several threads add to it.
        self.undelivered = DeliveryReport()
        self._lock = threading.Lock()

    # -- emitting ----------------------------------------------------------------------

    def event(self, name: str, **fields: Any) -> Event:
        return Event(name=name, time=self.now(), **fields)

    def emit(self, event: Event, *, deliver: bool = True) -> DeliveryReport:
        """Store ``event`` for every sink that wants it, then try to deliver it now.

        An event whose id is stored already is not stored or sent again.
        """
        sinks = self.sinks_for(event)
        record = EventRecord(
            id=event.id,
            time=event.time,
            name=event.name,
            client=event.client,
            job=event.job,
            run_id=event.run_id,
            payload=event.payload(),
        )
        if not self.outbox.add(record, sinks) or not deliver or not sinks:
            return DeliveryReport()
        report = self.deliver(event_id=event.id)
        with self._lock:
            self.undelivered.failed += report.failed
            self.undelivered.given_up += report.given_up
        return report

    def stale_event(self, client: str, last_success: datetime | None, max_age_s: float) -> Event:
        """A ``client.stale`` event with an id fixed per client, last success and day: a
        scheduler may run `status --stale` every hour, the pager rings once a day."""
        now = self.now()
        last = "never" if last_success is None else last_success.isoformat()
        since = "has never had a successful run" if last_success is None else (
            f"last succeeded {last_success:%Y-%m-%d %H:%M}Z")  # fmt: skip
        return Event(
            name="client.stale",
            time=now,
            client=client,
            message=f"{client}: no successful backup within {_span(max_age_s)}; {since}",
            details={"last_success": None if last_success is None else last,
                     "max_age_s": max_age_s},
            id=derived_id("client.stale", client, last, now.strftime("%Y-%m-%d")),
        )  # fmt: skip

    def sinks_for(self, event: Event) -> list[str]:
        """The sinks named by the event's job (or, for an event of no particular job,
        by any of the client's jobs, or by [defaults]), that want this event."""
        names: Iterable[str]
        client = event.client
        if client is not None and client in self.config.clients:
            known = self.config.job_names(client)
            jobs = [event.job] if event.job in known else known
            names = [n for job in jobs for n in self.config.job(client, job).notify]
        else:
            names = self.config.defaults.notify or []
        return [n for n in dict.fromkeys(names) if self.config.sink(n).wants(event.name)]

    # -- delivering --------------------------------------------------------------------

    def deliver(
        self,
        *,
        event_id: str | None = None,
        sink: str | None = None,
        ignore_backoff: bool = False,
        limit: int = 1000,
    ) -> DeliveryReport:
        """Send what is due (or everything pending, with ``ignore_backoff``)."""
        report = DeliveryReport()
        now = self.now()
        claimed = self.outbox.claim_due(
            now, timedelta(seconds=CLAIM_S), limit=limit, event_id=event_id, sink=sink,
            ignore_backoff=ignore_backoff,
        )  # fmt: skip
        for record, delivery in claimed:
            report.merge(self._deliver_one(record, delivery))
        return report

    def test(self, sink_name: str) -> DeliveryReport:
        """Send a test event to one sink, whatever its filter says."""
        self.config.sink(sink_name)  # unknown name: ConfigError, exit 2
        event = self.event(
            "test", message=f"strongroom test event for sink {sink_name}",
            details={"sink": sink_name},
        )  # fmt: skip
        record = EventRecord(event.id, event.time, event.name, None, None, None, event.payload())
        self.outbox.add(record, [sink_name])
        report = DeliveryReport()
        claimed = self.outbox.claim_due(
            self.now(), timedelta(seconds=CLAIM_S), event_id=event.id, ignore_backoff=True
        )
        for found, delivery in claimed:  # a test event is tried once, never retried
            report.merge(self._deliver_one(found, delivery, retry=False))
        return report

    def _deliver_one(
        self, record: EventRecord, delivery: Delivery, *, retry: bool = True
    ) -> DeliveryReport:
        report = DeliveryReport()
        key = (record.id, delivery.sink)
        try:
            sink = self.config.sink(delivery.sink)
        except UsageError:
            error = f"sink {delivery.sink} is no longer configured"
            self.outbox.attempt_failed(*key, error, None)
            report.given_up.append((*key, error))
            return report
        try:
            self.sender(sink).send(Event.from_payload(record.payload))
        except Exception as e:
            # Anything a sender did not foresee (a non-ASCII SMTP password, say) is a
            # failed attempt too: a sink must never break the run that emits. Its text
            # is unknown and may quote a secret, so only its type is kept.
            if isinstance(e, DeliveryFailed):
                error = str(e)
            else:
                error = f"{sink.kind} sink failed: {type(e).__name__}"
            attempts = delivery.attempts + 1
            next_at = None
            if retry and attempts < sink.max_attempts:
                next_at = self.now() + timedelta(seconds=retry_delay(attempts))
            self.outbox.attempt_failed(*key, error, next_at)
            (report.failed if next_at else report.given_up).append((*key, error))
            return report
        self.outbox.delivered(*key, self.now())
        report.delivered.append(key)
        return report

    def sender(self, sink: Sink) -> Sender:
        if isinstance(sink, CommandSink):
            return CommandSender(sink.command, sink.timeout, for_sinks(self.env))
        if isinstance(sink, WebhookSink):
            secret = None
            if sink.secret_file is not None:
                secret = _read_secret(sink.secret_file)
            return WebhookSender(
                sink.url.get_secret_value(),
                sink.timeout,
                {k: v.get_secret_value() for k, v in sink.headers.items()},
                secret,
            )
        if isinstance(sink, EmailSink):
            password = None
            if sink.password_file is not None:
                password = _read_secret(sink.password_file).decode()
            return EmailSender(
                sink.host, sink.port, sink.sender, sink.to, sink.timeout,
                sink.starttls, sink.username, password,
            )  # fmt: skip
        if isinstance(sink, SyslogSink):
            return SyslogSender(sink.address, sink.facility, sink.tag)
        assert isinstance(sink, AppriseSink)
        return AppriseSender([u.get_secret_value() for u in sink.urls])

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now_ns() / 1e9, UTC)


def _read_secret(path: str) -> bytes:
    try:
        return Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as e:
        raise DeliveryFailed(f"cannot read secret file {path}: {e.strerror}") from None


def _span(seconds: float) -> str:
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)}d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds)}s"
