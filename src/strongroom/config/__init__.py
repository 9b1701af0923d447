"""The fleet configuration: find, load and validate strongroom.toml, and resolve its jobs."""

from __future__ import annotations

from strongroom.config.clients import ClientSpec, DefaultsSpec
from strongroom.config.errors import ConfigError, ConfigIssue, ConfigNotFound
from strongroom.config.fleet import DEFAULT_JOB, Config
from strongroom.config.jobs import (
    CommandRequirement,
    FreshFileRequirement,
    Hook,
    JobSettings,
    JobSpec,
    MarkerRequirement,
    Requirement,
    Retention,
)
from strongroom.config.load import SYSTEM_CONFIG, find_config, load_config, parse_config
from strongroom.config.merge import BUILT_IN, merge_layers
from strongroom.config.names import EVENTS
from strongroom.config.repositories import CatalogSpec, RepositorySpec
from strongroom.config.sinks import (
    AppriseSink,
    CommandSink,
    EmailSink,
    Sink,
    SyslogSink,
    WebhookSink,
)
from strongroom.config.units import format_duration, parse_duration, parse_size

__all__ = [
    "BUILT_IN",
    "DEFAULT_JOB",
    "EVENTS",
    "SYSTEM_CONFIG",
    "AppriseSink",
    "CatalogSpec",
    "ClientSpec",
    "CommandRequirement",
    "CommandSink",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConfigNotFound",
    "DefaultsSpec",
    "EmailSink",
    "FreshFileRequirement",
    "Hook",
    "JobSettings",
    "JobSpec",
    "MarkerRequirement",
    "RepositorySpec",
    "Requirement",
    "Retention",
    "Sink",
    "SyslogSink",
    "WebhookSink",
    "find_config",
    "format_duration",
    "load_config",
    "merge_layers",
    "parse_config",
    "parse_duration",
    "parse_size",
]
