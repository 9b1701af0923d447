"""`strongroom report`: what happened, per client and run, as text, JSON, CSV or HTML."""

from __future__ import annotations

import csv
import html
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from strongroom.cli.context import App, format_size, pass_app
from strongroom.config import parse_duration

COLUMNS = (
    "client",
    "job",
    "started_at",
    "duration_s",
    "status",
    "exit_code",
    "files",
    "bytes_read",
    "bytes_new",
    "bytes_stored",
    "warnings",
    "snapshot_id",
    "message",
)


@click.command("report")
@click.option("--since", default="24h", show_default=True, help="How far back to report.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "csv", "html"]),
    default="text",
    show_default=True,
)
@pass_app
def report_command(app: App, since: str, fmt: str) -> None:
    """Report runs: per client and run, bytes, durations, failures."""
    config = app.load_config_if_any()
    now = datetime.fromtimestamp(app.clock.now_ns() / 1e9, UTC)
    start = now - timedelta(seconds=parse_duration(since))
    catalog = app.open_catalog(config)
    try:
        runs = catalog.runs_between(start, now + timedelta(seconds=1))
    finally:
        catalog.close()
    rows = [_row(run) for run in runs]
    totals = {
        "runs": len(rows),
        "succeeded": sum(r["status"] == "succeeded" for r in rows),
        "warning": sum(r["status"] == "warning" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "running": sum(r["status"] == "running" for r in rows),
        "clients": len({r["client"] for r in rows}),
        "bytes_read": sum(r["bytes_read"] for r in rows),
        "bytes_new": sum(r["bytes_new"] for r in rows),
        "bytes_stored": sum(r["bytes_stored"] for r in rows),
    }
    if app.json or fmt == "json":
        app.emit_json(
            {"since": start.isoformat(), "until": now.isoformat(), "totals": totals, "runs": rows}
        )
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(out.getvalue(), nl=False)
    elif fmt == "html":
        click.echo(_html(rows, totals, start, now))
    else:
        for line in _text(rows, totals, start):
            click.echo(line)


def _row(run: Any) -> dict[str, Any]:
    duration = (
        round((run.finished_at - run.started_at).total_seconds(), 3) if run.finished_at else None
    )
    c = run.counters
    return {
        "run_id": run.id,
        "client": run.client,
        "job": run.job,
        "director": run.director,
        "started_at": run.started_at.astimezone(UTC).isoformat(),
        "finished_at": run.finished_at.astimezone(UTC).isoformat() if run.finished_at else None,
        "duration_s": duration,
        "status": run.status.value,
        "exit_code": run.exit_code,
        "files": c.files,
        "bytes_read": c.bytes_read,
        "bytes_new": c.bytes_new,
        "bytes_stored": c.bytes_stored,
        "warnings": c.warnings,
        "snapshot_id": run.snapshot_id,
        "message": run.message,
    }


def _text(rows: list[dict[str, Any]], totals: dict[str, int], start: datetime) -> list[str]:
    """A totals line, then one line per run under a header naming the columns."""
    lines = [
        f"runs since {start:%Y-%m-%d %H:%M} UTC: {totals['runs']} "
        f"({totals['succeeded']} ok, {totals['warning']} with warnings, "
        f"{totals['failed']} failed) on {totals['clients']} client(s); "
        f"{format_size(totals['bytes_read'])} read, {format_size(totals['bytes_new'])} new, "
        f"{format_size(totals['bytes_stored'])} stored"
    ]
    if rows:
        lines.append(
            f"{'started (UTC)':16}  {'client':16} {'job':10} {'status':9} {'exit':4} "
            f"{'duration':>9} {'files':>8} {'read':>10} {'new':>10}  snapshot  message"
        )
    for r in rows:
        duration = "" if r["duration_s"] is None else f"{r['duration_s']:.1f}s"
        code = "-" if r["exit_code"] is None else str(r["exit_code"])
        snapshot = (r["snapshot_id"] or "-")[:8]
        lines.append(
            f"{r['started_at'][:16]}  {r['client']:16} {r['job']:10} {r['status']:9} "
            f"{code:4} {duration:>9} {r['files']:>8} "
            f"{format_size(r['bytes_read']):>10} {format_size(r['bytes_new']):>10}  "
            f"{snapshot:8}  {r['message'] or ''}".rstrip()
        )
    return lines


def _html(
    rows: list[dict[str, Any]], totals: dict[str, int], start: datetime, now: datetime
) -> str:
    def cell(value: Any) -> str:
        return f"<td>{html.escape('' if value is None else str(value))}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "\n".join(
        f'<tr class="{html.escape(r["status"])}">' + "".join(cell(r[c]) for c in COLUMNS) + "</tr>"
        for r in rows
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>strongroom report</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px}} tr.failed{{background:#fdd}}
tr.warning{{background:#ffd}}</style></head><body>
<h1>strongroom report</h1>
<p>{start:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC: {totals["runs"]} runs,
{totals["succeeded"]} succeeded, {totals["warning"]} with warnings, {totals["failed"]} failed,
on {totals["clients"]} client(s).</p>
<table><tr>{head}</tr>
{body}
</table></body></html>"""
