"""The fleet configuration: find, load and validate strongroom.toml, and resolve its jobs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use: pydantic costs ~0.15 s, which commands that need no config
# (an ad hoc backup, --help) should not pay.
if TYPE_CHECKING:
    from strongroom.config.clients import ClientSpec, DefaultsSpec
    from strongroom.config.errors import ConfigError, ConfigIssue, ConfigNotFound
    from strongroom.config.files import SYSTEM_CONFIG, find_config
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
    from strongroom.config.load import load_config, parse_config
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

_WHERE = {
    "AppriseSink": "strongroom.config.sinks",
    "BUILT_IN": "strongroom.config.merge",
    "CatalogSpec": "strongroom.config.repositories",
    "ClientSpec": "strongroom.config.clients",
    "CommandRequirement": "strongroom.config.jobs",
    "CommandSink": "strongroom.config.sinks",
    "Config": "strongroom.config.fleet",
    "ConfigError": "strongroom.config.errors",
    "ConfigIssue": "strongroom.config.errors",
    "ConfigNotFound": "strongroom.config.errors",
    "DEFAULT_JOB": "strongroom.config.fleet",
    "DefaultsSpec": "strongroom.config.clients",
    "EVENTS": "strongroom.config.names",
    "EmailSink": "strongroom.config.sinks",
    "FreshFileRequirement": "strongroom.config.jobs",
    "Hook": "strongroom.config.jobs",
    "JobSettings": "strongroom.config.jobs",
    "JobSpec": "strongroom.config.jobs",
    "MarkerRequirement": "strongroom.config.jobs",
    "RepositorySpec": "strongroom.config.repositories",
    "Requirement": "strongroom.config.jobs",
    "Retention": "strongroom.config.jobs",
    "SYSTEM_CONFIG": "strongroom.config.files",
    "Sink": "strongroom.config.sinks",
    "SyslogSink": "strongroom.config.sinks",
    "WebhookSink": "strongroom.config.sinks",
    "find_config": "strongroom.config.files",
    "format_duration": "strongroom.config.units",
    "load_config": "strongroom.config.load",
    "merge_layers": "strongroom.config.merge",
    "parse_config": "strongroom.config.load",
    "parse_duration": "strongroom.config.units",
    "parse_size": "strongroom.config.units",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
