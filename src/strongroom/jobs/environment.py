"""What the director's environment passes on to the commands it runs (R18).

Hooks, prerequisite commands and dump streams are the operator's own commands: they
may need database or storage credentials (``PGPASSWORD`` for ``pg_dump``), but never
the repository's password. A notification sink's command needs none of them.
"""

from __future__ import annotations

from collections.abc import Mapping

REPOSITORY_SECRETS = frozenset(
    {"STRONGROOM_PASSWORD", "STRONGROOM_PASSWORD_FILE", "STRONGROOM_PASSWORD_COMMAND"}
)
CREDENTIALS = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD"})


def for_job_commands(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of hooks, prerequisite commands and streams."""
    return {k: v for k, v in env.items() if k not in REPOSITORY_SECRETS}


def for_sinks(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a command sink: no repository password, no credentials."""
    return {k: v for k, v in env.items() if k not in REPOSITORY_SECRETS | CREDENTIALS}
