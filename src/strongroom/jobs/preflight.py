"""Preflight: is the client reachable, and are the job's prerequisites met?

Nothing is backed up unless every check passes: an unreachable client is exit 20, an
unmet prerequisite exit 21, each with the reason. The evidence of met prerequisites,
with the time each was checked, is recorded in the snapshot.

What is checked "on the client" is checked by the client's agent (through ssh and
``agent_command``, like a backup): a fresh file's size and age, and commands with
``on = "client"``. A local client's checks run here, on the director.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from strongroom.agent.director import AgentProcess, ClientUnreachable
from strongroom.agent.protocol import ProtocolError
from strongroom.catalog import Catalog
from strongroom.clock import Clock
from strongroom.config import (
    CommandRequirement,
    FreshFileRequirement,
    JobSpec,
    MarkerRequirement,
    Requirement,
    format_duration,
)
from strongroom.errors import EXIT_PREREQUISITE, StrongroomError
from strongroom.jobs.environment import for_job_commands
from strongroom.process import run_command as run_bounded

CONNECT_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 30.0
STAT_TIMEOUT_S = 60.0
# Besides a client command's own timeout: time for ssh to connect and the agent to start.
AGENT_START_S = 60.0


class PrerequisiteFailed(StrongroomError):
    exit_code = EXIT_PREREQUISITE
    hint = "nothing was backed up; fix the upstream job, then run again"


@dataclass(frozen=True)
class Check:
    name: str
    met: bool
    detail: str
    at: datetime | None = None  # when it was checked

    def __str__(self) -> str:
        when = f" at {self.at:%Y-%m-%dT%H:%M:%SZ}" if self.at is not None else ""
        return f"{self.name}: {'met' if self.met else 'NOT met'}{when} ({self.detail})"


def preflight(spec: JobSpec, catalog: Catalog, clock: Clock, env: Mapping[str, str]) -> list[Check]:
    """Every check, in order; raises ClientUnreachable (20) or PrerequisiteFailed (21)."""
    checks = check_all(spec, catalog, clock, env)
    unmet = [c for c in checks if not c.met]
    if unmet:
        raise PrerequisiteFailed(
            f"{spec.client}/{spec.name}: prerequisite not met: "
            + "; ".join(f"{c.name} ({c.detail})" for c in unmet),
            details={
                "unmet": [{"requirement": c.name, "reason": c.detail} for c in unmet],
                "met": [{"requirement": c.name, "evidence": c.detail} for c in checks if c.met],
            },
        )
    return checks


def check_all(spec: JobSpec, catalog: Catalog, clock: Clock, env: Mapping[str, str]) -> list[Check]:
    """Reachability, then every prerequisite, each stamped with the time it was checked.
    Raises ClientUnreachable (20); unmet prerequisites are returned, not raised."""

    def stamped(check: Check) -> Check:
        return replace(check, at=datetime.fromtimestamp(clock.now_ns() / 1e9, UTC))

    checks = [stamped(reachable(spec))]
    checks += [stamped(requirement(spec, req, catalog, clock, env)) for req in spec.requires]
    return checks


def reachable(spec: JobSpec) -> Check:
    if spec.transport == "local":
        return Check("reachable", True, "the director itself")
    try:
        socket.create_connection((spec.host, spec.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or str(e)
        raise ClientUnreachable(
            f"{spec.client}: cannot connect to {spec.host}:{spec.port}: {reason}",
            details={"host": spec.host, "port": spec.port, "reason": reason},
        ) from None
    if spec.ping_command:
        ping(spec)
        return Check("reachable", True, f"{spec.host}:{spec.port} answered, and the ping")
    return Check("reachable", True, f"{spec.host}:{spec.port} answered")


def ping(spec: JobSpec) -> None:
    """The optional ``ping_command`` (``{host}`` replaced); a failure is exit 20."""
    assert spec.ping_command is not None
    argv = [word.replace("{host}", spec.host) for word in spec.ping_command]
    try:
        proc = run_bounded(argv, timeout=PING_TIMEOUT_S)
        reason = None if proc.returncode == 0 else f"exited {proc.returncode}"
    except subprocess.TimeoutExpired:
        reason = f"no answer in {PING_TIMEOUT_S:g}s"
    except OSError as e:
        reason = f"could not run: {e.strerror}"
    if reason is not None:
        raise ClientUnreachable(
            f"{spec.client}: ping command {shlex.join(argv)} {reason}",
            details={"host": spec.host, "port": spec.port, "reason": f"ping {reason}"},
        )


def requirement(
    spec: JobSpec, req: Requirement, catalog: Catalog, clock: Clock, env: Mapping[str, str]
) -> Check:
    now = clock.now_ns() / 1e9
    if isinstance(req, MarkerRequirement):
        name = f"marker {req.name}"
        marker = catalog.get_marker(spec.client, req.name)
        if marker is None:
            return Check(name, False, "never marked")
        when = marker.time.astimezone(UTC).isoformat(timespec="seconds")
        note = f", note: {marker.note}" if marker.note else ""
        if marker.failed:
            return Check(name, False, f"marked FAILED at {when}{note}")
        if now - marker.time.timestamp() > req.max_age:
            return Check(
                name, False, f"last marked at {when}, older than {format_duration(req.max_age)}"
            )
        return Check(name, True, f"marked at {when}{note}")
    if isinstance(req, FreshFileRequirement):
        return _fresh_file(spec, req, now, env)
    return _command(spec, req, env)


def _fresh_file(
    spec: JobSpec, req: FreshFileRequirement, now: float, env: Mapping[str, str]
) -> Check:
    name = f"fresh-file {req.path}"
    if spec.transport == "local":
        try:
            st = os.stat(req.path)
        except OSError as e:
            return Check(name, False, e.strerror or str(e))
        mtime, size = st.st_mtime, st.st_size
    else:
        agent = AgentProcess(
            agent_command_line(spec), timeout_s=STAT_TIMEOUT_S, env=for_job_commands(env)
        )
        try:
            found = agent.stat(req.path)
        except ProtocolError as e:
            return Check(name, False, f"{e} ({e.hint})" if e.hint else str(e))
        if found.error is not None:
            return Check(name, False, f"{found.error} (on the client)")
        mtime, size = found.mtime_ns / 1e9, found.size
    when = datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")
    if now - mtime > req.max_age:
        return Check(name, False, f"modified {when}, older than {format_duration(req.max_age)}")
    if size < req.min_size:
        return Check(name, False, f"{size} bytes, less than min_size ({req.min_size} bytes)")
    return Check(name, True, f"modified {when}, {size} bytes")


def _command(spec: JobSpec, req: CommandRequirement, env: Mapping[str, str]) -> Check:
    return run_command(spec, f"command {shlex.join(req.command)}", req.command, req.on,
                       req.timeout, env)  # fmt: skip


def run_command(
    spec: JobSpec,
    name: str,
    command: Sequence[str],
    on: str,
    timeout: float,
    env: Mapping[str, str],
) -> Check:
    """Run a prerequisite or hook command on the director, or on the client by its
    agent; at ``timeout`` it is killed with everything it started.

    Raises ClientUnreachable when a client command cannot reach the client."""
    job_env = {"STRONGROOM_CLIENT": spec.client, "STRONGROOM_JOB": spec.name}
    start = time.monotonic()
    if on == "client" and spec.transport != "local":
        agent = AgentProcess(
            agent_command_line(spec), timeout_s=timeout + AGENT_START_S, env=for_job_commands(env)
        )
        try:
            ran = agent.run(command, timeout, job_env)
        except ProtocolError as e:
            return Check(name, False, f"{e} ({e.hint})" if e.hint else str(e))
        if ran.timed_out:
            return Check(name, False, f"timed out after {format_duration(int(timeout))}")
        code, output = ran.exit_code, ran.output
    else:
        try:
            proc = run_bounded(command, timeout=timeout, env={**for_job_commands(env), **job_env})
        except subprocess.TimeoutExpired:
            return Check(name, False, f"timed out after {format_duration(int(timeout))}")
        except OSError as e:
            return Check(name, False, f"cannot run: {e.strerror or e}")
        code = proc.returncode
        output = _text(proc.stderr) or _text(proc.stdout)
    took = f"{time.monotonic() - start:.1f}s"
    if code != 0:
        detail = _last_line(output)
        return Check(name, False, f"exit {code} after {took}: {detail}".rstrip(": "))
    return Check(name, True, f"exit 0 after {took}")


def agent_command_line(spec: JobSpec) -> list[str]:
    """``ssh_command -p PORT HOST agent_command``; the remote shell sees quoted words."""
    return [
        *spec.ssh_command,
        "-p",
        str(spec.port),
        spec.host,
        " ".join(shlex.quote(word) for word in spec.agent_command),
    ]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else ""
