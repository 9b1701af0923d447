"""Clients ([clients.NAME]) and the fleet-wide [defaults] they inherit."""

from __future__ import annotations

from pydantic import Field

from strongroom.config.base import Host
from strongroom.config.jobs import ConnectionSettings, JobSettings, Transport
from strongroom.config.names import Name


class DefaultsSpec(JobSettings, ConnectionSettings):
    """Settings every job inherits unless its client or itself sets them."""


class ClientSpec(JobSettings, ConnectionSettings):
    """One client: how to reach it, its groups, its default job's settings (the unnamed
    keys) and its named jobs."""

    host: Host | None = None
    transport: Transport = "ssh"
    groups: list[Name] = Field(default_factory=list)
    jobs: dict[Name, JobSettings] = Field(default_factory=dict)

    def hostname(self, name: str, domain: str) -> str:
        """``host`` if set, else the short ``name`` in ``domain``."""
        if self.host is not None:
            return self.host
        suffix = domain.strip(".")
        return f"{name}.{suffix}" if suffix else name
