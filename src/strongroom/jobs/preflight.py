"""Preflight: is the client reachable, and are the job's prerequisites met?

Nothing is backed up unless every check passes: an unreachable client is exit 20, an
unmet prerequisite exit 21, each with the reason. The evidence of met prerequisites
is recorded in the snapshot.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from strongroom.agent.director import ClientUnreachable
from strongroom.catalog import Catalog
from strongroom.clock import Clock
from strongroom.config import (
    CommandRequirement,
    FreshFileRequirement,
    JobSpec,
    MarkerRequirement,
    Requirement,
)
from strongroom.errors import EXIT_PREREQUISITE, StrongroomError
from strongroom.jobs.environment import for_job_commands

CONNECT_TIMEOUT_S = 10.0


class PrerequisiteFailed(StrongroomError):
    exit_code = EXIT_PREREQUISITE
    hint = "nothing was backed up; fix the upstream job, then run again"


@dataclass(frozen=True)
class Check:
    name: str
    met: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {'met' if self.met else 'NOT met'} ({self.detail})"


def preflight(spec: JobSpec, catalog: Catalog, clock: Clock, env: Mapping[str, str]) -> list[Check]:
    """Every check, in order; raises ClientUnreachable (20) or PrerequisiteFailed (21)."""
    checks = [reachable(spec)]
    checks += [requirement(spec, req, catalog, clock, env) for req in spec.requires]
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
    return Check("reachable", True, f"{spec.host}:{spec.port} answered")


def ping(spec: JobSpec) -> None:
    """The optional ``ping_command`` (``{host}`` replaced); a failure is exit 20."""
    assert spec.ping_command is not None
    argv = [word.replace("{host}", spec.host) for word in spec.ping_command]
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=CONNECT_TIMEOUT_S * 3, check=False,
        )  # fmt: skip
        reason = None if proc.returncode == 0 else f"exited {proc.returncode}"
    except subprocess.TimeoutExpired:
        reason = f"no answer in {CONNECT_TIMEOUT_S * 3:g}s"
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
            return Check(name, False, f"last marked at {when}, older than {req.max_age}s")
        return Check(name, True, f"marked at {when}{note}")
    if isinstance(req, FreshFileRequirement):
        return _fresh_file(spec, req, now)
    return _command(spec, req, env)


def _fresh_file(spec: JobSpec, req: FreshFileRequirement, now: float) -> Check:
    name = f"fresh-file {req.path}"
    if spec.transport == "local":
        try:
            st = os.stat(req.path)
        except OSError as e:
            return Check(name, False, e.strerror or str(e))
        mtime, size = st.st_mtime, st.st_size
    else:
        proc = _on_client(spec, f"stat -L -c '%Y %s' -- {shlex.quote(req.path)}", 60)
        if proc.returncode != 0:
            return Check(name, False, _last_line(proc.stderr) or "stat failed on the client")
        try:
            mtime_text, size_text = proc.stdout.split()
            mtime, size = float(mtime_text), int(size_text)
        except ValueError:
            return Check(name, False, "unexpected answer from stat on the client")
    when = datetime.fromtimestamp(mtime, UTC).isoformat(timespec="seconds")
    if now - mtime > req.max_age:
        return Check(name, False, f"modified {when}, older than {req.max_age}s")
    if size < req.min_size:
        return Check(name, False, f"{size} bytes, less than {req.min_size}")
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
    """Run a prerequisite or hook command on the director, or on the client over ssh."""
    start = time.monotonic()
    try:
        if on == "client" and spec.transport != "local":
            proc = _on_client(spec, shlex.join(command), timeout)
        else:
            proc = subprocess.run(
                list(command), capture_output=True, text=True, timeout=timeout,
                env={**for_job_commands(env), "STRONGROOM_CLIENT": spec.client,
                     "STRONGROOM_JOB": spec.name},
                check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        return Check(name, False, f"timed out after {timeout}s")
    except OSError as e:
        return Check(name, False, f"cannot run: {e.strerror or e}")
    took = f"{time.monotonic() - start:.1f}s"
    if proc.returncode != 0:
        detail = _last_line(proc.stderr) or _last_line(proc.stdout)
        return Check(name, False, f"exit {proc.returncode} after {took}: {detail}".rstrip(": "))
    return Check(name, True, f"exit 0 after {took}")


def _on_client(spec: JobSpec, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    argv = [*spec.ssh_command, "-p", str(spec.port), spec.host, command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else ""
