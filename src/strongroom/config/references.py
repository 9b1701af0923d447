"""References by name inside the raw config: repositories, notify sinks, policies."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from strongroom.config.lines import KeyPath
from strongroom.config.names import unknown

Problem = tuple[KeyPath, str]


def reference_problems(data: Mapping[str, object]) -> list[Problem]:
    """Every name in a job layer of ``data`` that is not defined where it points.

    Works on the parsed TOML before validation, so that these problems are reported
    together with every other one.
    """
    repositories = _names(data, "repositories")
    sinks = _names(data, "notify")
    policies = _names(data, "policies")
    problems: list[Problem] = []
    for path, layer in _job_layers(data):
        repository = layer.get("repository")
        if isinstance(repository, str) and repository not in repositories:
            problems.append(
                ((*path, "repository"), unknown("repository", repository, repositories))
            )
        retention = layer.get("retention")
        if isinstance(retention, str) and retention not in policies:
            problems.append(((*path, "retention"), unknown("policy", retention, policies)))
        notify = layer.get("notify")
        for index, sink in enumerate(notify if isinstance(notify, list) else []):
            if isinstance(sink, str) and sink not in sinks:
                problems.append(((*path, "notify", index), unknown("notify sink", sink, sinks)))
    return problems


def _names(data: Mapping[str, object], section: str) -> list[str]:
    table = data.get(section)
    return list(table) if isinstance(table, dict) else []


def _job_layers(data: Mapping[str, object]) -> Iterator[tuple[KeyPath, Mapping[str, object]]]:
    """[defaults], each [clients.NAME] and each [clients.NAME.jobs.JOB], where tables."""
    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        yield ("defaults",), defaults
    clients = data.get("clients")
    for name, client in clients.items() if isinstance(clients, dict) else ():
        if not isinstance(client, dict):
            continue
        yield ("clients", name), client
        jobs = client.get("jobs")
        for job, settings in jobs.items() if isinstance(jobs, dict) else ():
            if isinstance(settings, dict):
                yield ("clients", name, "jobs", job), settings
