"""Pydantic's validation errors in a user's words, at the key path written in the file."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from strongroom.config.clients import ClientSpec, DefaultsSpec
from strongroom.config.fleet import Config
from strongroom.config.jobs import (
    CommandRequirement,
    FreshFileRequirement,
    Hook,
    MarkerRequirement,
    Retention,
)
from strongroom.config.lines import KeyPath
from strongroom.config.names import quote
from strongroom.config.references import Problem
from strongroom.config.repositories import CatalogSpec, RepositorySpec
from strongroom.config.sinks import AppriseSink, CommandSink, EmailSink, SyslogSink, WebhookSink

_MODELS: Sequence[type[BaseModel]] = (
    Config, CatalogSpec, RepositorySpec, Retention, DefaultsSpec, ClientSpec,
    MarkerRequirement, FreshFileRequirement, CommandRequirement, Hook,
    CommandSink, WebhookSink, EmailSink, SyslogSink, AppriseSink,
)  # fmt: skip
KNOWN_KEYS = sorted(
    {field.alias or name for model in _MODELS for name, field in model.model_fields.items()}
)
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "is_instance_of": "a string",
}
_ABSENT = object()
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def schema_problems(error: ValidationError, data: Mapping[str, object]) -> list[Problem]:
    """One (key path, message) per error pydantic found in ``data``."""
    problems = []
    for details in error.errors():
        path = data_path(details["loc"], data)
        if details["type"].startswith("union_tag_"):
            path += (str(details.get("ctx", {})["discriminator"]).strip("'"),)
        problems.append((path, describe(details, path)))
    return problems


def data_path(loc: tuple[int | str, ...], data: Mapping[str, object]) -> KeyPath:
    """The path in ``data`` that pydantic's ``loc`` points at, without its union tags.

    Walks ``data`` along ``loc``: parts that name a key or index are kept, a tag that
    picked a union member (``"marker"``, ``"table"``) is skipped, and a last part naming
    a missing key is kept.
    """
    path: list[str | int] = []
    node: object = data
    for position, part in enumerate(loc):
        if isinstance(node, dict) and node.get("kind") == part:
            continue  # the discriminator's tag, not a key
        if (child := _child(node, part)) is not _ABSENT:
            node = child
            path.append(part)
        elif position == len(loc) - 1 and isinstance(node, dict) and part != "[key]":
            path.append(part)
    return tuple(path)


def _child(node: object, part: int | str) -> object:
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    if isinstance(node, dict) and part in node:
        return node[part]
    return _ABSENT


def describe(details: Mapping[str, Any], path: KeyPath) -> str:
    """What is wrong, in words that fit after the key path. Never echoes a string the
    user wrote unless the field is a fixed choice (it may be a secret)."""
    kind = details["type"]
    ctx: dict[str, Any] = details.get("ctx") or {}
    value = details["input"]
    if kind in ("value_error", "assertion_error"):
        return str(ctx["error"])
    if kind in ("missing", "union_tag_not_found"):
        return "missing: this key is required"
    if kind == "extra_forbidden":
        return _unknown_key(path)
    if kind == "union_tag_invalid":
        return f"unknown kind {quote(str(ctx['tag']))} (kinds: {_choices(ctx['expected_tags'])})"
    if kind == "literal_error":
        return f"expected {_choices(ctx['expected'])}, not {_show(value)}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, not {_toml_type(value)}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx[key]}, not {value}"
    return str(details["msg"])


def _unknown_key(path: KeyPath) -> str:
    key = str(path[-1]) if path else ""
    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.75)
    suggestion = f' (did you mean "{close[0]}"?)' if close else ""
    return f"unknown key{suggestion}"


def _choices(expected: str) -> str:
    return expected.replace("'", '"')


def _show(value: object) -> str:
    return quote(value) if isinstance(value, str) else _toml_type(value)


def _toml_type(value: object) -> str:
    for kind, noun in (
        (bool, "true/false"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, kind):
            return noun
    return "a date or time"
