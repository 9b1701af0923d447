"""`strongroom schedule export`: per-client job definitions for the scheduler you run.

Each entry runs `strongroom run CLIENT --job JOB --window DATE`, DATE being the day the
scheduler starts it (`date +%F`): a scheduler's retry of a night that already
succeeded then exits 0 without a second backup.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import click

from strongroom.cli.context import App, pass_app
from strongroom.config import parse_duration
from strongroom.errors import EXIT_CODES, UsageError

HH_MM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
WINDOW_FORMAT = "%F"  # date(1) and strftime: the start day, 2026-11-25
# cron hands the line to sh, but an unescaped % would end the command there.
CRON_WINDOW_FORMAT = WINDOW_FORMAT.replace("%", "\\%")
_SYSTEMD_PLAIN = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


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
    help="The strongroom command the scheduler should run (found on PATH now, so the "
    "scheduler's own short PATH does not matter).",
)
@click.option(
    "--window/--no-window",
    default=True,
    show_default=True,
    help="Add `--window DATE` (the day the scheduler starts the run), so that a retry "
    "of a night that succeeded makes no second backup.",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="systemd: write each .service and .timer file into this directory.",
)
@pass_app
def schedule_export(
    app: App,
    fmt: str,
    default_time: str,
    jitter: str | None,
    user: str,
    program: str,
    window: bool,
    output_dir: Path | None,
) -> None:
    """One entry per client job, from each job's `schedule` hint."""
    config = app.load_config()
    if not HH_MM.match(default_time):
        raise UsageError(f"--default-time {default_time!r} is not HH:MM")
    if output_dir is not None and fmt != "systemd":
        raise UsageError("--output-dir goes with --format systemd")
    jitter_s = int(parse_duration(jitter)) if jitter else 0
    config_path = str(Path(config.file).resolve())
    words = shlex.split(program)
    if not words:
        raise UsageError("--program is empty")
    words[0] = shutil.which(words[0]) or words[0]
    entries = [
        Entry(
            spec.client,
            spec.name,
            [*words, "--config", config_path, "run", spec.client, "--job", spec.name],
            spec.schedule or default_time,
            _offset(spec.client, spec.name, jitter_s),
        )
        for spec in config.jobs()
    ]
    if app.json or fmt == "json":
        app.emit_json([
            {"client": e.client, "job": e.job, "command": e.command, "schedule": e.schedule,
             "on_calendar": _on_calendar(e.schedule), "cron": _cron(e.schedule, e.offset_s),
             "offset_s": e.offset_s, "jitter_s": jitter_s,
             # add `--window` and the start time formatted so (strftime)
             "window_format": WINDOW_FORMAT if window else None}
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
            dated = f' --window "$(date +{CRON_WINDOW_FORMAT})"' if window else ""
            click.echo(f"{cron} {user} {shlex.join(e.command)}{dated}")
        return
    for e in entries:
        unit = f"strongroom-{e.client}-{e.job}"
        service = (
            f"# Exit codes:\n{legend}"
            f"[Unit]\nDescription=strongroom backup of {e.client} ({e.job})\n\n"
            f"[Service]\nType=oneshot\nExecStart={_exec_start(e.command, window)}\n"
            "# 3 = snapshot written with warnings: not a failure for systemd\n"
            "SuccessExitStatus=3\n"
        )
        timer = (
            f"[Unit]\nDescription=nightly strongroom backup of {e.client} ({e.job})\n\n"
            f"[Timer]\nOnCalendar={_on_calendar(e.schedule)}\nPersistent=true\n"
            + (f"RandomizedDelaySec={jitter_s}\n" if jitter_s else "")
            + "\n[Install]\nWantedBy=timers.target\n"
        )
        if output_dir is None:
            click.echo(f"# ---- {unit}.service ----\n{service}\n# ---- {unit}.timer ----\n{timer}")
            continue
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, text in ((f"{unit}.service", service), (f"{unit}.timer", timer)):
            (output_dir / name).write_text(text)
            app.result(str(output_dir / name))


@dataclass(frozen=True)
class Entry:
    client: str
    job: str
    command: list[str]
    schedule: str
    offset_s: int


def _exec_start(command: list[str], window: bool) -> str:
    """An ExecStart= value. systemd runs no shell, so the start day comes from one:
    `sh -c 'exec "$@" --window "$(date +%F)"' sh COMMAND...`, with systemd's own
    escapes ($$ for $, %% for %)."""
    words = [_systemd_word(w) for w in command]
    if not window:
        return " ".join(words)
    script = f'exec "$$@" --window "$$(date +{WINDOW_FORMAT.replace("%", "%%")})"'
    return f"/bin/sh -c '{script}' sh " + " ".join(words)


def _systemd_word(word: str) -> str:
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_PLAIN.match(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
