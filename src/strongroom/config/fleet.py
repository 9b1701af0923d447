"""The whole configuration, Config, and what other modules ask of it: jobs, groups, names."""

from __future__ import annotations

from typing import Any, cast

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from strongroom.config.base import ConfigModel
from strongroom.config.clients import ClientSpec, DefaultsSpec
from strongroom.config.errors import ConfigError, ConfigIssue
from strongroom.config.jobs import (
    CONNECTION_KEYS,
    JOB_KEYS,
    CopySpec,
    JobSpec,
    ResolvedCopy,
    Retention,
)
from strongroom.config.lines import KeyLines, KeyPath, key_path
from strongroom.config.merge import BUILT_IN, layer_of, merge_layers
from strongroom.config.names import Name, listing, quote, unknown
from strongroom.config.repositories import CatalogSpec, MetricsSpec, RepositorySpec
from strongroom.config.sinks import Sink

DEFAULT_JOB = "default"
LOOKUP_HINT = "`strongroom config check --json` lists the clients, groups and jobs"


class Config(ConfigModel):
    """A validated configuration file. Its lookups raise ConfigError naming the key."""

    domain: str = ""
    catalog: CatalogSpec | None = None
    repositories: dict[Name, RepositorySpec] = Field(default_factory=dict)
    policies: dict[Name, Retention] = Field(default_factory=dict)
    defaults: DefaultsSpec = DefaultsSpec()
    clients: dict[Name, ClientSpec] = Field(default_factory=dict)
    notify: dict[Name, Sink] = Field(default_factory=dict)
    metrics: MetricsSpec | None = None

    _file: str = PrivateAttr(default="strongroom.toml")
    _lines: KeyLines | None = PrivateAttr(default=None)

    @field_validator("domain")
    @classmethod
    def _domain_is_a_name(cls, domain: str) -> str:
        if any(c.isspace() or c in "/@:" for c in domain):
            raise ValueError(f"invalid domain {quote(domain)} (like .example.com)")
        return domain

    @model_validator(mode="after")
    def _remember_source(self, info: ValidationInfo) -> Config:
        context = info.context or {}
        self._file = context.get("file", self._file)
        self._lines = context.get("lines")
        return self

    @property
    def file(self) -> str:
        """The file this configuration was read from, as it was named."""
        return self._file

    # --- clients and jobs -------------------------------------------------------------

    def client(self, name: str) -> ClientSpec:
        if name not in self.clients:
            raise self.error(("clients", name), f"no such client ({listing(self.clients)})")
        return self.clients[name]

    def job_names(self, client: str) -> list[str]:
        """The client's jobs, its default job first (when it has one)."""
        spec = self.client(client)
        named = [name for name in spec.jobs if name != DEFAULT_JOB]
        return [DEFAULT_JOB, *named] if self._has_default_job(spec) else named

    def job(self, client: str, job_name: str | None = None) -> JobSpec:
        """The effective job: built-in values, then [defaults], then the client's own
        keys, then [clients.CLIENT.jobs.JOB]. ``None`` means the default job."""
        names = self.job_names(client)
        if job_name is None and DEFAULT_JOB not in names:
            raise self.error(
                ("clients", client),
                f"has no default job (no sources of its own); choose one with --job: "
                f"{', '.join(names)}",
                at=("clients", client),
            )
        name = job_name or DEFAULT_JOB
        if name not in names:
            raise self.error(
                ("clients", client, "jobs", name),
                f"no such job (jobs: {', '.join(names)})",
                at=("clients", client),
            )
        return self._resolve(client, name)

    def jobs(self) -> list[JobSpec]:
        """Every job of every client, in the file's order."""
        return [
            self.job(client, name) for client in self.clients for name in self.job_names(client)
        ]

    # --- groups, repositories, sinks --------------------------------------------------

    def groups(self) -> dict[str, list[str]]:
        """Each group (named by the clients that list it) and its clients."""
        groups: dict[str, list[str]] = {}
        for name, spec in self.clients.items():
            for group in spec.groups:
                groups.setdefault(group, []).append(name)
        return groups

    def clients_in_group(self, group: str) -> list[str]:
        """The clients listing ``group``; ConfigError when there are none."""
        groups = self.groups()
        if group not in groups:
            known = ", ".join(groups) or "no client lists any"
            raise self.error((), f"no client is in group {quote(group)} (groups: {known})")
        return groups[group]

    def repository(self, name: str) -> RepositorySpec:
        if name not in self.repositories:
            raise self.error(
                ("repositories", name), f"no such repository ({listing(self.repositories)})"
            )
        return self.repositories[name]

    def sink(self, name: str) -> Sink:
        if name not in self.notify:
            raise self.error(("notify", name), f"no such sink ({listing(self.notify)})")
        return self.notify[name]

    # --- errors -----------------------------------------------------------------------

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        """A problem at ``path``, placed on the line that writes it (or encloses it)."""
        return ConfigIssue(self._file, self._line_of(path), key_path(path), message)

    def error(self, path: KeyPath, message: str, *, at: KeyPath = ()) -> ConfigError:
        """A lookup of ``path`` that failed: a client, job, group, repository or sink that
        is not defined. The line is that of ``at``, if given: the file has no ``path``."""
        issue = ConfigIssue(self._file, self._line_of(at), key_path(path), message)
        return ConfigError([issue], hint=LOOKUP_HINT)

    def _line_of(self, path: KeyPath) -> int | None:
        return self._lines.line_of(path) if self._lines is not None and path else None

    # --- resolution -------------------------------------------------------------------

    def _has_default_job(self, spec: ClientSpec) -> bool:
        if DEFAULT_JOB in spec.jobs:
            return True
        merged = merge_layers(self._layer(self.defaults), self._layer(spec))
        return bool(merged.get("sources") or merged.get("streams"))

    def _resolve(self, client: str, name: str) -> JobSpec:
        spec = self.clients[client]
        own = spec.jobs.get(name)
        merged = merge_layers(
            BUILT_IN,
            self._layer(self.defaults),
            self._layer(spec),
            {} if own is None else layer_of(own, JOB_KEYS),
        )
        path: KeyPath = ("clients", client) if own is None else ("clients", client, "jobs", name)
        self._check_resolved(path, merged)
        retention = merged["retention"] = self._retention(path, merged["retention"])
        copies = cast(list[CopySpec], merged["copies"])
        merged["copies"] = [
            ResolvedCopy(
                repository=copy.repository,
                retention=retention
                if copy.retention is None
                else self._retention((*path, "copies", index), copy.retention),
            )
            for index, copy in enumerate(copies)
        ]
        fields = {
            "client": client,
            "name": name,
            "host": spec.hostname(client, self.domain),
            "transport": spec.transport,
            "groups": spec.groups,
            **merged,
        }
        return JobSpec.model_validate(
            {
                key: tuple(value) if isinstance(value, list) else value
                for key, value in fields.items()
            }
        )

    def _check_resolved(self, path: KeyPath, merged: dict[str, Any]) -> None:
        issues = []
        if "repository" not in merged:
            issues.append(
                self.issue((*path, "repository"), "no repository: set one here or in [defaults]")
            )
        elif merged["repository"] not in self.repositories:
            issues.append(self.issue((*path, "repository"), self._unknown_repository(merged)))
        if not merged["sources"] and not merged["streams"]:
            issues.append(self.issue((*path, "sources"), "no sources or streams to back up"))
        copies: list[CopySpec] = merged["copies"]
        for index, copy in enumerate(copies):
            if copy.repository not in self.repositories:
                message = unknown("repository", copy.repository, self.repositories)
                issues.append(self.issue((*path, "copies", index, "repository"), message))
            elif copy.repository == merged.get("repository"):
                message = "an off-site copy must go to another repository than the job's own"
                issues.append(self.issue((*path, "copies", index, "repository"), message))
        if issues:
            raise ConfigError(issues)

    def _unknown_repository(self, merged: dict[str, Any]) -> str:
        return unknown("repository", merged["repository"], self.repositories)

    def _retention(self, path: KeyPath, value: object) -> Retention:
        if isinstance(value, Retention):
            return value
        assert isinstance(value, str)
        if value not in self.policies:
            message = unknown("policy", value, self.policies)
            raise ConfigError([self.issue((*path, "retention"), message)])
        return self.policies[value]

    @staticmethod
    def _layer(settings: DefaultsSpec | ClientSpec) -> dict[str, object]:
        return layer_of(settings, JOB_KEYS + CONNECTION_KEYS)
