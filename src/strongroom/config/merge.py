"""The pure merge of config layers (built in -> defaults -> client -> named job)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel

from strongroom.config.jobs import Retention

# What a job gets when no layer sets a key.
BUILT_IN: Mapping[str, object] = {
    "port": 22,
    "ssh_command": ["ssh"],
    "agent_command": ["strongroom", "agent"],
    "sources": [],
    "exclude": [],
    "requires": [],
    "hooks": [],
    "streams": [],
    "copies": [],
    "retention": Retention(),
    "notify": [],
    "tags": [],
}


def merge_layers(*layers: Mapping[str, object]) -> dict[str, object]:
    """One mapping from ``layers``, the later ones winning key by key.

    A key that a layer leaves unset (None or absent) is inherited from the layers before
    it. Lists and tables replace, never combine: a client's ``exclude`` replaces the
    one in [defaults], and a job's ``retention`` table replaces the client's whole.
    """
    merged: dict[str, object] = {}
    for layer in layers:
        merged.update((key, value) for key, value in layer.items() if value is not None)
    return merged


def layer_of(settings: BaseModel, keys: Iterable[str]) -> dict[str, object]:
    """The values of ``keys`` in ``settings`` that it sets (not None)."""
    return {key: value for key in keys if (value := getattr(settings, key)) is not None}
