"""`strongroom status`: fleet state from the catalog; `--stale` for monitoring."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from strongroom.cli.context import App, pass_app
from strongroom.config import Config, parse_duration
from strongroom.errors import EXIT_FATAL, EXIT_SUCCESS

if TYPE_CHECKING:
    from strongroom.catalog import Catalog, StaleClient


@click.command("status")
@click.option(
    "--stale",
    metavar="DURATION",
    help="Exit 1 listing every client without a successful run within DURATION.",
)
@pass_app
def status_command(app: App, stale: str | None) -> int:
    """Show each client's last run; with --stale, fail when a client is overdue."""
    config = app.load_config_if_any()
    # Without a config, the catalog alone still tells the state.
    configured = sorted(config.clients) if config is not None else None
    now = datetime.fromtimestamp(app.clock.now_ns() / 1e9, UTC)
    max_age = parse_duration(stale) if stale else None
    catalog = app.open_catalog(config)
    try:
        last = {run.client: run for run in catalog.last_runs()}
        overdue = (
            catalog.stale_clients(now, timedelta(seconds=max_age), configured)
            if max_age is not None
            else []
        )
        if config is not None and overdue and max_age is not None:
            notify_stale(app, config, catalog, overdue, max_age)
        if config is not None:
            from strongroom.cli.commands.run import write_metrics

            write_metrics(app, config, catalog)
    finally:
        catalog.close()
    names = configured if configured is not None else sorted(last)
    if app.json:
        app.emit_json(
            {
                "clients": [_client_json(name, last.get(name)) for name in names],
                "stale": [
                    {"client": s.name, "last_success": _iso(s.last_success)} for s in overdue
                ],
            }
        )
    else:
        for name in names:
            run = last.get(name)
            if run is None:
                app.result(f"{name:20} never ran")
            else:
                app.result(
                    f"{name:20} {run.status.value:10} exit {run.exit_code!s:4} "
                    f"{run.started_at:%Y-%m-%d %H:%M}  {run.message or ''}".rstrip()
                )
        for s in overdue:
            since = f"last success {_iso(s.last_success)}" if s.last_success else "never succeeded"
            click.echo(f"STALE {s.name}: {since}", err=True)
    return EXIT_FATAL if overdue else EXIT_SUCCESS


def notify_stale(
    app: App, config: Config, catalog: Catalog, overdue: list[StaleClient], max_age: float
) -> None:
    """One ``client.stale`` event per stale client per day (the id says so: running
    `status --stale` every hour pages once)."""
    from strongroom.cli.commands.run import report_deliveries
    from strongroom.jobs.notifier import Notifier

    notifier = Notifier(config, catalog, app.clock, dict(os.environ))
    for s in overdue:
        report = notifier.emit(notifier.stale_event(s.name, s.last_success, max_age))
        report_deliveries(app, report)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _client_json(name: str, run: object) -> dict[str, object]:
    from strongroom.catalog import Run

    if not isinstance(run, Run):
        return {"client": name, "last_run": None}
    return {
        "client": name,
        "last_run": {
            "id": run.id,
            "job": run.job,
            "status": run.status.value,
            "exit_code": run.exit_code,
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "snapshot_id": run.snapshot_id,
            "message": run.message,
        },
    }
