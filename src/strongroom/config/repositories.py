"""Repositories and the catalog as configured, and how a repository's password is read."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr, model_validator

from strongroom.config.base import Command, ConfigModel, ConfigPath, Text
from strongroom.errors import UsageError, WrongPasswordError

PASSWORD_COMMAND_TIMEOUT = 120  # seconds; a fleet run must not hang on a prompt


class CatalogSpec(ConfigModel):
    """Where the catalog lives; the URL may carry a database password, so it is secret."""

    url: SecretStr


class MetricsSpec(ConfigModel):
    """Where `run` and `status` write Prometheus metrics for the node exporter's
    textfile collector (a ``.prom`` file, replaced atomically)."""

    textfile: ConfigPath


class RepositorySpec(ConfigModel):
    """A repository's location and where its password comes from (a file, a command, or
    the environment when neither is given)."""

    url: Text
    password_file: ConfigPath | None = None
    password_command: Command | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> RepositorySpec:
        if self.password_file is not None and self.password_command is not None:
            raise ValueError("set password_file or password_command, not both")
        return self

    def password(self, env: Mapping[str, str]) -> bytes:
        """The password: from password_file (one trailing newline stripped), from
        password_command's output (run without a shell, in ``env``), or else from
        STRONGROOM_PASSWORD, STRONGROOM_PASSWORD_FILE or STRONGROOM_PASSWORD_COMMAND.

        Raises UsageError when the file cannot be read, WrongPasswordError when the
        command fails or no password is given anywhere.
        """
        if self.password_file is not None:
            return read_password_file(self.password_file)
        if self.password_command is not None:
            return run_password_command(self.password_command, env)
        return password_from_env(env)


def read_password_file(path: str) -> bytes:
    try:
        return _strip_newline(Path(path).read_bytes())
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from None


def run_password_command(argv: list[str], env: Mapping[str, str]) -> bytes:
    """stdout of ``argv``; its output never appears in an error, only its name and code."""
    name = os.path.basename(argv[0])
    try:
        proc = subprocess.run(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PASSWORD_COMMAND_TIMEOUT,
            check=False,
        )
    except OSError as e:
        raise WrongPasswordError(f"password command {name} could not run: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise WrongPasswordError(
            f"password command {name} gave no answer in {PASSWORD_COMMAND_TIMEOUT}s"
        ) from None
    if proc.returncode != 0:
        raise WrongPasswordError(f"password command {name} failed with exit code {proc.returncode}")
    password = _strip_newline(proc.stdout)
    if not password:
        raise WrongPasswordError(f"password command {name} printed no password")
    return password


def password_from_env(env: Mapping[str, str]) -> bytes:
    if (value := env.get("STRONGROOM_PASSWORD")) is not None:
        return value.encode()
    if path := env.get("STRONGROOM_PASSWORD_FILE"):
        return read_password_file(path)
    if command := env.get("STRONGROOM_PASSWORD_COMMAND"):
        return run_password_command(shlex.split(command), env)
    raise WrongPasswordError(
        "no password: the repository has no password_file or password_command, "
        "and none is set in the environment"
    )


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data
