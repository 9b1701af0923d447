"""`strongroom mark` and `strongroom preflight`: upstream jobs and prerequisite checks."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import click

from strongroom.cli.context import App, pass_app
from strongroom.errors import EXIT_PREREQUISITE, EXIT_SUCCESS, UsageError


@click.command("mark")
@click.argument("name")
@click.option("--client", required=True, help="The client the upstream job ran for.")
@click.option("--failed", is_flag=True, help="Record that the upstream job failed.")
@click.option("--note", help="A line of text kept with the mark.")
@pass_app
def mark_command(app: App, name: str, client: str, failed: bool, note: str | None) -> None:
    """Record that an upstream job (an SQL dump, say) finished, for `marker` prerequisites."""
    from strongroom.catalog import Marker

    config = app.load_config_if_any()
    if config is not None and client not in config.clients:
        raise UsageError(f"unknown client {client!r} (not in {config.file})")
    now = datetime.fromtimestamp(app.clock.now_ns() / 1e9, UTC)
    catalog = app.open_catalog(config)
    try:
        catalog.set_marker(Marker(client=client, name=name, time=now, failed=failed, note=note))
    finally:
        catalog.close()
    state = "failed" if failed else "done"
    if app.json:
        app.emit_json(
            {
                "client": client,
                "name": name,
                "time": now.isoformat(),
                "failed": failed,
                "note": note,
            }
        )
    else:
        app.result(f"marked {name} {state} for {client} at {now:%Y-%m-%d %H:%M:%S} UTC")


@click.command("preflight")
@click.argument("client")
@click.option("--job", help="Check this job instead of the client's default job.")
@pass_app
def preflight_command(app: App, client: str, job: str | None) -> int:
    """Check reachability and prerequisites only; same exit codes as `run` (20, 21).

    Every check is listed, met or not, with its evidence or the reason it failed.
    """
    from strongroom.jobs.preflight import check_all

    config = app.load_config()
    spec = config.job(client, job)
    catalog = app.open_catalog(config)
    try:
        checks = check_all(spec, catalog, app.clock, dict(os.environ))  # 20 raises
    finally:
        catalog.close()
    code = EXIT_SUCCESS if all(c.met for c in checks) else EXIT_PREREQUISITE
    if app.json:
        app.emit_json({"client": spec.client, "job": spec.name, "exit_code": code,
                       "checks": [{"name": c.name, "met": c.met, "detail": c.detail,
                                   "checked_at": c.at.isoformat() if c.at else None}
                                  for c in checks]})  # fmt: skip
    else:
        for c in checks:
            app.result(str(c))
        unmet = [c.name for c in checks if not c.met]
        if unmet:
            click.echo(f"{spec.client}/{spec.name}: not ready: {', '.join(unmet)} "
                       "(a run would back up nothing and exit 21)", err=True)  # fmt: skip
        else:
            app.result(f"{spec.client}/{spec.name}: ready")
    return code
