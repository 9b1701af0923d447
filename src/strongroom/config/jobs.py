"""What a job is made of: settings a config layer may set, and the effective JobSpec."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from strongroom.config.base import (
    AbsolutePath,
    Command,
    ConfigModel,
    Count,
    Port,
    Text,
    Timeout,
)
from strongroom.config.names import Name
from strongroom.config.units import Duration, Size

Transport = Literal["ssh", "local"]
Where = Literal["director", "client"]


class Retention(ConfigModel):
    """How many snapshots to keep per period, and a span within which all are kept."""

    last: Count | None = None
    hourly: Count | None = None
    daily: Count | None = None
    weekly: Count | None = None
    monthly: Count | None = None
    yearly: Count | None = None
    within: Duration | None = None
    # restic's --keep-within-<period>: the newest of each period within the duration.
    within_hourly: Duration | None = None
    within_daily: Duration | None = None
    within_weekly: Duration | None = None
    within_monthly: Duration | None = None
    within_yearly: Duration | None = None


class MarkerRequirement(ConfigModel):
    """Met when `strongroom mark NAME` recorded success within ``max_age`` seconds."""

    kind: Literal["marker"]
    name: Name
    max_age: Duration


class FreshFileRequirement(ConfigModel):
    """Met when ``path`` on the client is younger than ``max_age`` and not smaller than
    ``min_size`` bytes."""

    kind: Literal["fresh-file"]
    path: AbsolutePath
    max_age: Duration
    min_size: Size = 0


class CommandRequirement(ConfigModel):
    """Met when ``command`` exits 0 within ``timeout`` seconds, on the director or client."""

    kind: Literal["command"]
    command: Command
    on: Where = "director"
    timeout: Timeout = 300


Requirement = Annotated[
    MarkerRequirement | FreshFileRequirement | CommandRequirement, Field(discriminator="kind")
]


class Hook(ConfigModel):
    """A command run before the backup (its failure means exit 22, no snapshot), after a
    snapshot is written, or after a failed run."""

    when: Literal["before", "after", "failure"]
    command: Command
    on: Where = "client"
    timeout: Timeout = 600


class Stream(ConfigModel):
    """A command whose stdout is stored as the file ``name`` in the snapshot (a database
    dump, say), with no temporary file; a non-zero exit fails the run."""

    name: Text
    command: Command
    on: Where = "client"
    timeout: Timeout = 6 * 3600

    @field_validator("name")
    @classmethod
    def _relative_safe_name(cls, name: str) -> str:
        parts = name.split("/")
        if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError("a stream name is a relative path without '.' or '..' parts")
        return name


def _retention_kind(value: object) -> str:
    return "policy" if isinstance(value, str) else "table"


# A retention table, or the name of one under [policies].
RetentionSetting = Annotated[
    Annotated[Retention, Tag("table")] | Annotated[Name, Tag("policy")],
    Discriminator(_retention_kind),
]


class CopySpec(ConfigModel):
    """An off-site copy: after a successful backup, the job's new snapshots are copied to
    ``repository``, where ``retention`` (inherit the job's when left out) applies."""

    repository: Name
    retention: RetentionSetting | None = None


class JobSettings(ConfigModel):
    """What a layer (defaults, client, named job) may set; None means inherit."""

    repository: Name | None = None
    sources: list[AbsolutePath] | None = None
    exclude: list[Text] | None = None
    requires: list[Requirement] | None = None
    hooks: list[Hook] | None = None
    streams: list[Stream] | None = None
    retention: RetentionSetting | None = None
    copies: list[CopySpec] | None = None
    notify: list[Name] | None = None
    tags: list[Name] | None = None
    schedule: Text | None = None
    timeout: Timeout | None = None


class ConnectionSettings(ConfigModel):
    """How the director reaches a client's agent; None means inherit."""

    port: Port | None = None
    ssh_command: Command | None = None
    agent_command: Command | None = None
    ping_command: Command | None = None  # run on the director; "{host}" is replaced


class ResolvedCopy(ConfigModel):
    """An off-site copy with its retention resolved."""

    repository: str
    retention: Retention


JOB_KEYS = tuple(JobSettings.model_fields)
CONNECTION_KEYS = tuple(ConnectionSettings.model_fields)


class JobSpec(ConfigModel):
    """One job of one client with every layer applied: what `strongroom run` executes.

    Durations are seconds, sizes bytes. ``repository`` and ``notify`` are names of
    entries in Config.repositories and Config.notify. It holds no secrets.
    """

    client: str
    name: str
    host: str
    transport: Transport
    port: int
    ssh_command: tuple[str, ...]
    agent_command: tuple[str, ...]
    ping_command: tuple[str, ...] | None = None
    groups: tuple[str, ...]
    repository: str
    sources: tuple[str, ...]
    exclude: tuple[str, ...]
    requires: tuple[Requirement, ...]
    hooks: tuple[Hook, ...]
    streams: tuple[Stream, ...] = ()
    retention: Retention
    copies: tuple[ResolvedCopy, ...] = ()
    notify: tuple[str, ...]
    tags: tuple[str, ...]
    schedule: str | None = None
    timeout: int | None = None
