"""`strongroom config check|show`: validate the configuration, show a client's job."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import click

from strongroom.cli.context import App, pass_app
from strongroom.config import (
    Config,
    ConfigError,
    JobSpec,
    find_config,
    format_duration,
    load_config,
)
from strongroom.engine.retention import WITHIN_PERIODS
from strongroom.errors import EXIT_SUCCESS, EXIT_USAGE

DURATION_KEYS = {"max_age", "within", "timeout"} | {f"within_{p}" for p, _ in WITHIN_PERIODS}


@click.group("config")
def config_command() -> None:
    """Validate the configuration file and show what it means."""


@config_command.command("check")
@pass_app
def config_check(app: App) -> int:
    """Validate the config; each error names file, line and key (exit 2)."""
    try:
        config = load_config(find_config(app.config, os.environ))
    except ConfigError as e:
        return _report_errors(app, e)
    if app.json:
        app.emit_json({"ok": True, "file": config.file, "errors": [], **_contents(config)})
    else:
        app.result(f"{config.file}: ok: {_summary(config)}")
    return EXIT_SUCCESS


@config_command.command("show")
@click.argument("client")
@click.option("--job", "job_name", metavar="JOB", help="A named job instead of the default.")
@pass_app
def config_show(app: App, client: str, job_name: str | None) -> None:
    """Show CLIENT's job with [defaults] and the client's settings applied (no secrets)."""
    job = load_config(find_config(app.config, os.environ)).job(client, job_name)
    if app.json:
        app.emit_json(job.model_dump(mode="json"))
        return
    for line in _job_lines(job):
        app.result(line)


def _report_errors(app: App, error: ConfigError) -> int:
    if app.json:
        file = error.issues[0].file if error.issues else None
        doc = {"ok": False, "file": file, "errors": [i.as_json() for i in error.issues]}
        app.emit_json({**doc, "clients": []})
    else:
        for issue in error.issues:
            click.echo(str(issue), err=True)
        click.echo(f"strongroom: {len(error.issues)} configuration error(s)", err=True)
    return EXIT_USAGE


def _summary(config: Config) -> str:
    def names(what: str, items: list[str]) -> str:
        return f"{len(items)} {what}" + (f" ({', '.join(items)})" if items else "")

    return ", ".join(
        (
            f"{len(config.clients)} client(s)",
            f"{len(config.jobs())} job(s)",
            names("group(s)", list(config.groups())),
            names("repository(ies)", list(config.repositories)),
            names("sink(s)", list(config.notify)),
        )
    )


def _contents(config: Config) -> dict[str, object]:
    clients = [
        {
            "name": name,
            "host": spec.hostname(name, config.domain),
            "transport": spec.transport,
            "groups": spec.groups,
            "jobs": config.job_names(name),
        }
        for name, spec in config.clients.items()
    ]
    return {
        "clients": clients,
        "jobs": len(config.jobs()),
        "groups": config.groups(),
        "repositories": list(config.repositories),
        "sinks": list(config.notify),
    }


def _job_lines(job: JobSpec) -> Iterator[str]:
    """The job as TOML a user could paste into the file."""
    yield f"# client {job.client}, job {job.name}"
    for key, value in job.model_dump(exclude={"requires", "hooks"}).items():
        if value is not None:
            yield f"{key} = {_toml(key, value)}"
    for table in ("requires", "hooks"):
        for item in job.model_dump()[table]:
            yield ""
            yield f"[[{table}]]"
            yield from (f"{key} = {_toml(key, value)}" for key, value in item.items())


def _toml(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and key in DURATION_KEYS:
        return json.dumps(format_duration(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(key, item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = [f"{k} = {_toml(k, v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    return json.dumps(value)
