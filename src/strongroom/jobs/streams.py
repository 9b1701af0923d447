"""A job's streams, split by where their commands run: here on the director, or by the
client's agent (`on = "client"`, the default, for clients reached over SSH)."""

from __future__ import annotations

from collections.abc import Mapping

from strongroom.config import JobSpec
from strongroom.engine.streams import CommandStream, check_stream_names
from strongroom.jobs.environment import for_job_commands


def director_streams(spec: JobSpec, env: Mapping[str, str]) -> list[CommandStream]:
    """The streams run on the director: all of a local client's, and the ones a remote
    job marks `on = "director"` (`pg_dump -h dbhost`, say). Their commands see the same
    STRONGROOM_CLIENT and STRONGROOM_JOB as hooks do."""
    check_stream_names([s.name for s in spec.streams])
    run_env = {
        **for_job_commands(env),
        "STRONGROOM_CLIENT": spec.client,
        "STRONGROOM_JOB": spec.name,
    }
    return [
        CommandStream(s.name, s.command, s.timeout, run_env)
        for s in spec.streams
        if spec.transport == "local" or s.on == "director"
    ]


def client_streams(spec: JobSpec) -> list[CommandStream]:
    """The streams the agent runs on a remote client; only their name, command and
    timeout travel (the agent's own environment applies there)."""
    if spec.transport == "local":
        return []
    return [CommandStream(s.name, s.command, s.timeout) for s in spec.streams if s.on == "client"]
