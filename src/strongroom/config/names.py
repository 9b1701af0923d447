"""Names the config refers to things by: clients, jobs, groups, sinks, and event names."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator

EVENTS = (
    "run.started",
    "run.succeeded",
    "run.warning",
    "run.failed",
    "client.unreachable",
    "prerequisite.failed",
    "hook.failed",
    "client.stale",
    "check.failed",
    "prune.finished",
    "copy.finished",
    "media.due",
)
NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe short name, else raise ValueError saying why."""
    if not _NAME.fullmatch(name) or len(name) > NAME_MAX:
        raise ValueError(
            f"invalid name {quote(name)} (use up to {NAME_MAX} letters, digits, "
            '".", "_" or "-", starting with a letter or digit)'
        )
    return name


def check_event(name: str) -> str:
    """Return ``name`` if it is one of SPEC's event names, else raise ValueError."""
    if name not in EVENTS:
        raise ValueError(f"unknown event {quote(name)} (events: {', '.join(EVENTS)})")
    return name


def quote(text: str) -> str:
    """``text`` in double quotes, the way TOML would write it."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unknown(what: str, name: str, known: Iterable[str]) -> str:
    """The message for a reference to a ``what`` that is not defined."""
    return f"unknown {what} {quote(name)} ({listing(known)})"


def listing(names: Iterable[str]) -> str:
    """``names`` for a message: "defined: a, b", or "none defined"."""
    names = list(names)
    return "defined: " + ", ".join(names) if names else "none defined"


Name = Annotated[str, AfterValidator(check_name)]
EventName = Annotated[str, AfterValidator(check_event)]
