"""Prometheus metrics in the node exporter's textfile-collector format.

Written from the catalog (not from one run's memory), so every director and every
`status` call writes the same complete picture of the fleet: per client and job, the
last run's exit code, duration and bytes, and the time of the last success. The file
is replaced atomically (prometheus_client writes a temp file and renames it).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Gauge, generate_latest, write_to_textfile

from strongroom.catalog import Catalog


def fleet_registry(catalog: Catalog, clients: Iterable[str]) -> CollectorRegistry:
    """The metrics of the last run of every client's jobs, and which configured
    ``clients`` never succeeded."""
    registry = CollectorRegistry()
    labels = ["client", "job"]

    def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, [*labels, *extra], registry=registry)

    last_success = gauge(
        "strongroom_last_success_timestamp_seconds",
        "Unix time when the job's last successful (or warning) run finished; 0 if never.",
    )
    last_end = gauge(
        "strongroom_last_run_timestamp_seconds", "Unix time when the job's last run finished."
    )
    exit_code = gauge("strongroom_last_run_exit_code", "Exit code of the job's last run.")
    duration = gauge("strongroom_last_run_duration_seconds", "Duration of the job's last run.")
    size = gauge("strongroom_last_run_bytes", "Bytes of the job's last run, by kind.", ("kind",))
    files = gauge("strongroom_last_run_files", "Files in the job's last run.")
    never = gauge(
        "strongroom_client_never_succeeded",
        "1 for a configured client with no successful run on record.",
    )

    states = catalog.job_states()
    for run, success_at in states:
        client, job = run.client, run.job
        assert run.finished_at is not None
        last_end.labels(client, job).set(run.finished_at.timestamp())
        exit_code.labels(client, job).set(run.exit_code if run.exit_code is not None else -1)
        duration.labels(client, job).set((run.finished_at - run.started_at).total_seconds())
        size.labels(client, job, "read").set(run.counters.bytes_read)
        size.labels(client, job, "new").set(run.counters.bytes_new)
        size.labels(client, job, "stored").set(run.counters.bytes_stored)
        files.labels(client, job).set(run.counters.files)
        last_success.labels(client, job).set(success_at.timestamp() if success_at else 0)
    seen = {run.client for run, success_at in states if success_at is not None}
    for client in clients:
        never.labels(client, "").set(0 if client in seen else 1)
    return registry


def write_textfile(path: str, registry: CollectorRegistry) -> None:
    write_to_textfile(path, registry)


def render(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def utc_now(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)
