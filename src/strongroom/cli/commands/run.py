"""`strongroom run`: run configured jobs, one command per client for the scheduler."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import click

from strongroom.catalog import Catalog
from strongroom.cli.context import App, format_size, pass_app
from strongroom.cli.memory import limit_arenas
from strongroom.config import Config, JobSpec, parse_duration
from strongroom.engine.workers import Workers
from strongroom.errors import UsageError
from strongroom.jobs.notifier import DeliveryReport, Notifier
from strongroom.jobs.run import Director, RunOutcome, worst_exit_code


@click.command("run")
@click.argument("clients", nargs=-1)
@click.option("--group", "group", help="Every client in this group.")
@click.option("--all", "all_clients", is_flag=True, help="Every configured client.")
@click.option("--job", help="Run this job instead of each client's default job.")
@click.option(
    "--parallel",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Run this many clients at once.",
)
@click.option(
    "--wait",
    "wait",
    metavar="DURATION",
    help="If the job is already running, wait this long for it (default: exit 11).",
)
@click.option(
    "--window",
    metavar="NAME",
    help="At most one successful run per job in this window (e.g. the night's date): "
    "a retry after a success exits 0 and names the existing run.",
)
@click.option("--dry-run", is_flag=True, help="Show what would run; change nothing.")
@pass_app
def run_command(
    app: App,
    clients: tuple[str, ...],
    group: str | None,
    all_clients: bool,
    job: str | None,
    parallel: int,
    wait: str | None,
    window: str | None,
    dry_run: bool,
) -> int:
    """Run configured jobs: backup, catalog records. Exits with the worst code of all runs."""
    limit_arenas()  # a thread per session: see cli.memory
    if sum(bool(x) for x in (clients, group, all_clients)) != 1:
        raise UsageError("name clients, or give --group G, or --all (exactly one of these)")
    config = app.load_config()
    if all_clients:
        names = sorted(config.clients)
    elif group:
        names = config.clients_in_group(group)
    else:
        names = list(clients)
    specs = [config.job(name, job) for name in names]  # unknown names fail here, exit 2
    wait_s = float(parse_duration(wait)) if wait else 0.0
    if dry_run:
        for spec in specs:
            line = (
                f"would run {spec.client}/{spec.name} via {spec.transport} "
                f"({', '.join(spec.sources)}) into {spec.repository}"
            )
            app.result(line)
            app.json_line(
                "plan",
                client=spec.client,
                job=spec.name,
                transport=spec.transport,
                sources=list(spec.sources),
                repository=spec.repository,
            )
        return 0
    # A local client (the director's own files) is backed up by worker processes as
    # `backup` does, forked now: before the catalog opens and before any thread starts.
    # One such run per command takes them; others (several local clients) use threads.
    local = sum(spec.transport == "local" for spec in specs)
    with Workers(app.worker_processes() if local == 1 else 0, app.clock) as workers:
        return _run(app, config, specs, parallel, wait_s, window, workers)


def _run(
    app: App,
    config: Config,
    specs: list[JobSpec],
    parallel: int,
    wait_s: float,
    window: str | None,
    workers: Workers,
) -> int:
    catalog = app.open_catalog(config)
    try:
        env = dict(os.environ)
        notifier = Notifier(config, catalog, app.clock, env)
        director = Director(
            config, catalog, app.clock, app.state_dir(), app.cache_dir(), env,
            notifier=notifier, workers=workers,
        )  # fmt: skip

        progress = RunProgress(app, len(specs))

        def one(spec_client: str, spec_job: str) -> RunOutcome:
            progress.started(spec_client)
            outcome = director.run(spec_client, spec_job, wait_s=wait_s, window=window)
            progress.finished(outcome)
            _report(app, outcome)
            return outcome

        try:
            with ThreadPoolExecutor(parallel, thread_name_prefix="strongroom-run") as pool:
                outcomes = list(pool.map(one, [s.client for s in specs], [s.name for s in specs]))
        finally:
            progress.close()
            director.close()
        # Retry whatever earlier runs could not deliver; a sink's trouble is reported,
        # never turned into the run's exit code (the events wait in the outbox).
        report_deliveries(app, notifier.undelivered)
        report_deliveries(app, notifier.deliver())
        write_metrics(app, config, catalog)
    finally:
        catalog.close()
    code = worst_exit_code([o.exit_code for o in outcomes])
    if len(outcomes) > 1 and not app.json:
        failed = [o for o in outcomes if o.exit_code not in (0, 3)]
        app.result(
            f"{len(outcomes)} runs: {len(outcomes) - len(failed)} ok, "
            f"{len(failed)} failed; exit code {code}"
        )
    return code


class RunProgress:
    """On a terminal, one stderr line: how many runs are done, failed and running."""

    def __init__(self, app: App, total: int) -> None:
        self.enabled = app.show_progress
        self.total = total
        self._running: list[str] = []
        self._done = self._failed = 0
        self._lock = threading.Lock()

    def started(self, client: str) -> None:
        with self._lock:
            self._running.append(client)
            self._draw()

    def finished(self, outcome: RunOutcome) -> None:
        with self._lock:
            self._running.remove(outcome.client)
            self._done += 1
            self._failed += outcome.exit_code not in (0, 3)
            self._draw()

    def _draw(self) -> None:
        if self.enabled:
            running = ", ".join(self._running[:4]) + ("..." if len(self._running) > 4 else "")
            line = (f"{self._done}/{self.total} done, {self._failed} failed; running: {running}")[
                :120
            ]
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _report(app: App, outcome: RunOutcome) -> None:
    if app.show_progress:
        sys.stderr.write("\r\033[K")  # results go above the progress line
    if app.json:
        app.emit_json(outcome.as_json())
        return
    for w in outcome.warnings[:20]:
        app.warn(f"{outcome.client}: {w}")
    if outcome.snapshot_id and outcome.status != "skipped":
        s = outcome.summary
        app.result(
            f"{outcome.client}/{outcome.job}: {outcome.status}, exit {outcome.exit_code}, "
            f"snapshot {outcome.snapshot_id[:8]}: {s.get('files_new', 0)} new, "
            f"{s.get('files_changed', 0)} changed, {s.get('files_unmodified', 0)} unchanged "
            f"files; {format_size(s.get('bytes_read', 0))} read, "
            f"{format_size(s.get('bytes_new', 0))} new, "
            f"{format_size(s.get('bytes_stored', 0))} stored, in {s.get('duration_s', 0):.1f}s"
            + (f": {outcome.message}" if outcome.message else "")
        )
        for copy in s.get("copies", []):
            caught_up = copy.get("caught_up", [])
            app.result(
                f"{outcome.client}/{outcome.job}: copied to {copy['repository']} as "
                f"{copy['snapshot_id'][:8]}"
                + (f" (and {len(caught_up)} earlier snapshot(s) it missed)" if caught_up else "")
                + f", {copy['bytes_uploaded']} bytes uploaded; "
                f"retention there removed {len(copy['forgotten'])} snapshot(s)"
            )
        if "forgotten" in s:
            app.result(
                f"{outcome.client}/{outcome.job}: retention removed "
                f"{len(s['forgotten'])} snapshot(s)"
            )
    else:
        app.result(
            f"{outcome.client}/{outcome.job}: {outcome.status}, exit {outcome.exit_code}: "
            f"{outcome.message}"
        )


def report_deliveries(app: App, report: DeliveryReport) -> None:
    for event_id, sink, error in report.failed:
        app.warn(f"event {event_id[:8]} not delivered to {sink} (will retry): {error}")
    for event_id, sink, error in report.given_up:
        app.warn(f"event {event_id[:8]} given up for {sink}: {error}")


def write_metrics(app: App, config: Config, catalog: Catalog) -> None:
    """Refresh the Prometheus textfile, when the config names one."""
    if config.metrics is None:
        return
    from strongroom.jobs.metrics import fleet_registry, write_textfile

    try:
        write_textfile(config.metrics.textfile, fleet_registry(catalog, sorted(config.clients)))
    except OSError as e:
        app.warn(f"cannot write metrics to {config.metrics.textfile}: {e.strerror}")
