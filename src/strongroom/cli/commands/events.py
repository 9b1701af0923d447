"""`strongroom events list | deliver | test SINK`: the event outbox.

Every event is in the catalog before any sink sees it. `list` shows what was notified
and what is pending; `deliver` retries what is due (run it from the scheduler every
few minutes, or let each `run` do it); `test` sends one test event to one sink.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from strongroom.cli.context import App, pass_app
from strongroom.config import parse_duration
from strongroom.errors import EXIT_FATAL, EXIT_SUCCESS


@click.group("events")
def events_command() -> None:
    """The event outbox: what was notified, what is pending, a test event."""


@events_command.command("list")
@click.option("--since", metavar="DURATION", default="7d", show_default=True)
@click.option("--client", help="Only this client's events.")
@click.option("--event", "name", help="Only events of this name (run.failed, ...).")
@click.option("--pending", is_flag=True, help="Only events some sink has not yet received.")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 100000))
@pass_app
def list_command(
    app: App, since: str, client: str | None, name: str | None, pending: bool, limit: int
) -> None:
    """List events, newest first, with each sink's delivery state."""
    from strongroom.catalog.outbox import Outbox

    config = app.load_config_if_any()
    now = datetime.fromtimestamp(app.clock.now_ns() / 1e9, UTC)
    catalog = app.open_catalog(config)
    try:
        found = Outbox(catalog).events(
            since=now - timedelta(seconds=parse_duration(since)),
            client=client,
            name=name,
            pending_only=pending,
            limit=limit,
        )
    finally:
        catalog.close()
    if app.json:
        app.emit_json(
            [
                {
                    **record.payload,
                    "deliveries": [
                        {
                            "sink": d.sink,
                            "state": d.state,
                            "attempts": d.attempts,
                            "next_attempt_at": _iso(d.next_attempt_at),
                            "delivered_at": _iso(d.delivered_at),
                            "last_error": d.last_error,
                        }
                        for d in deliveries
                    ],
                }
                for record, deliveries in found
            ]
        )
        return
    for record, deliveries in found:
        states = ", ".join(
            f"{d.sink}={d.state}" + (f"({d.attempts})" if d.state != "delivered" else "")
            for d in deliveries
        )
        app.result(
            f"{record.time:%Y-%m-%d %H:%M:%S}  {record.id[:8]}  {record.name:20} "
            f"{record.payload.get('message', '')}  [{states or 'no sink'}]"
        )
        for d in deliveries:  # why a sink has not got it (stored redacted)
            if d.state != "delivered" and d.last_error:
                next_try = f", next try {d.next_attempt_at:%H:%M:%S}" if d.next_attempt_at else ""
                app.result(f"    {d.sink}: {d.last_error}{next_try}")


@events_command.command("deliver")
@click.option("--all", "everything", is_flag=True, help="Ignore backoff: try every pending one.")
@click.option("--sink", help="Only deliveries to this sink.")
@pass_app
def deliver_command(app: App, everything: bool, sink: str | None) -> int:
    """Deliver pending events that are due; exit 1 if any delivery failed."""
    from strongroom.jobs.notifier import Notifier

    config = app.load_config()
    if sink is not None:
        config.sink(sink)  # an unknown name is a configuration error (exit 2), not "0 sent"
    catalog = app.open_catalog(config)
    try:
        notifier = Notifier(config, catalog, app.clock, dict(os.environ))
        report = notifier.deliver(sink=sink, ignore_backoff=everything, limit=100000)
    finally:
        catalog.close()
    failed = report.failed + report.given_up
    if app.json:
        app.emit_json(
            {
                "type": "summary",
                "delivered": len(report.delivered),
                "failed": [_failure(f, retry=True) for f in report.failed]
                + [_failure(f, retry=False) for f in report.given_up],
                "exit_code": EXIT_FATAL if failed else EXIT_SUCCESS,
            }
        )
    else:
        for event_id, sink_name, error in report.failed:
            app.warn(f"event {event_id[:8]} to {sink_name}: {error} (will retry)")
        for event_id, sink_name, error in report.given_up:
            app.warn(f"event {event_id[:8]} to {sink_name}: {error} (given up)")
        app.result(f"{len(report.delivered)} delivered, {len(failed)} failed")
    return EXIT_FATAL if failed else EXIT_SUCCESS


@events_command.command("test")
@click.argument("sink")
@pass_app
def test_command(app: App, sink: str) -> int:
    """Send a test event to SINK now; exit 1 if it did not take it."""
    from strongroom.jobs.notifier import Notifier

    config = app.load_config()
    catalog = app.open_catalog(config)
    try:
        report = Notifier(config, catalog, app.clock, dict(os.environ)).test(sink)
    finally:
        catalog.close()
    errors = [error for _, _, error in report.failed + report.given_up]
    if app.json:
        app.emit_json(
            {"type": "summary", "sink": sink, "delivered": not errors,
             "error": errors[0] if errors else None,
             "exit_code": EXIT_FATAL if errors else EXIT_SUCCESS}
        )  # fmt: skip
    elif errors:
        click.echo(f"error: test event not delivered to {sink}: {errors[0]}", err=True)
    else:
        app.result(f"test event delivered to {sink}")
    return EXIT_FATAL if errors else EXIT_SUCCESS


def _failure(item: tuple[str, str, str], *, retry: bool) -> dict[str, Any]:
    event_id, sink, error = item
    return {"event_id": event_id, "sink": sink, "error": error, "will_retry": retry}


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None
