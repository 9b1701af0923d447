"""`strongroom schedule export`: per-client job definitions for the scheduler you run."""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click

from strongroom.cli.context import App, pass_app
from strongroom.config import parse_duration
from strongroom.errors import EXIT_CODES, UsageError

HH_MM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@click.group("schedule")
def schedule_command() -> None:
    """Export the fleet's jobs for an external scheduler (cron, systemd, or anything)."""


@schedule_command.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["crontab", "systemd", "json"]),
    default="crontab",
    show_default=True,
)
@click.option(
    "--default-time",
    default="01:00",
    show_default=True,
    help="HH:MM for jobs whose config has no schedule hint.",
)
@click.option(
    "--jitter",
    metavar="DURATION",
    help="Spread starts: a fixed per-client offset up to DURATION (cron), or "
    "RandomizedDelaySec (systemd).",
)
@click.option("--user", default="root", show_default=True, help="crontab user field.")
@click.option(
    "--program",
    default="strongroom",
    show_default=True,
    help="The strongroom command the scheduler should run.",
)
@pass_app
def schedule_export(
    app: App, fmt: str, default_time: str, jitter: str | None, user: str, program: str
) -> None:
    """One entry per client job, from each job's `schedule` hint."""
    config = app.load_config()
    if not HH_MM.match(default_time):
        raise UsageError(f"--default-time {default_time!r} is not HH:MM")
    jitter_s = int(parse_duration(jitter)) if jitter else 0
    config_path = str(Path(config.file).resolve())
    entries = [
        Entry(
            spec.client,
            spec.name,
            [*shlex.split(program), "--config", config_path, "run", spec.client, "--job",
             spec.name],
            spec.schedule or default_time,
            _offset(spec.client, spec.name, jitter_s),
        )
        for spec in config.jobs()
    ]  # fmt: skip
    if app.json or fmt == "json":
        app.emit_json([
            {"client": e.client, "job": e.job, "command": e.command, "schedule": e.schedule,
             "on_calendar": _on_calendar(e.schedule), "cron": _cron(e.schedule, e.offset_s),
             "offset_s": e.offset_s, "jitter_s": jitter_s}
            for e in entries
        ])  # fmt: skip
        return
    legend = "".join(f"#   {code:>3}  {text}\n" for code, text in EXIT_CODES.items())
    if fmt == "crontab":
        click.echo(f"# strongroom jobs, one line per client job. Exit codes:\n{legend}", nl=False)
        for e in entries:
            cron = _cron(e.schedule, e.offset_s)
            if cron is None:
                click.echo(f"# {e.client}/{e.job}: schedule {e.schedule!r} is not HH:MM; "
                           "use --format systemd or json")  # fmt: skip
                continue
            click.echo(f"{cron} {user} {shlex.join(e.command)}")
        return
    for e in entries:
        unit = f"strongroom-{e.client}-{e.job}"
        click.echo(f"# ---- {unit}.service ----\n# Exit codes:\n{legend}"
                   f"[Unit]\nDescription=strongroom backup of {e.client} ({e.job})\n\n"
                   f"[Service]\nType=oneshot\nExecStart={shlex.join(e.command)}\n"
                   "# 3 = snapshot written with warnings: not a failure for systemd\n"
                   "SuccessExitStatus=3\n\n"
                   f"# ---- {unit}.timer ----\n"
                   f"[Unit]\nDescription=nightly strongroom backup of {e.client}\n\n"
                   f"[Timer]\nOnCalendar={_on_calendar(e.schedule)}\nPersistent=true\n"
                   + (f"RandomizedDelaySec={jitter_s}\n" if jitter_s else "")
                   + "\n[Install]\nWantedBy=timers.target\n")  # fmt: skip


@dataclass(frozen=True)
class Entry:
    client: str
    job: str
    command: list[str]
    schedule: str
    offset_s: int


def _offset(client: str, job: str, jitter_s: int) -> int:
    """A stable offset for one job, so every export spreads the fleet the same way."""
    if not jitter_s:
        return 0
    digest = hashlib.sha256(f"{client}/{job}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (jitter_s + 1)


def _cron(hint: str, offset_s: int) -> str | None:
    m = HH_MM.match(hint)
    if m is None:
        return None
    total = (int(m.group(1)) * 60 + int(m.group(2)) + offset_s // 60) % (24 * 60)
    return f"{total % 60} {total // 60} * * *"


def _on_calendar(hint: str) -> str:
    m = HH_MM.match(hint)
    return f"*-*-* {int(m.group(1)):02d}:{m.group(2)}:00" if m else hint
