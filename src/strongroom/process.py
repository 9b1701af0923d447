"""Running an operator's command (a hook, a check, a pager) within a deadline.

The command runs in its own session, so at the deadline it is stopped together with
everything it started: a hook `sh -c "pg_ctl stop; sleep 600"` leaves no `sleep`
behind, and the pipes close so the caller is never kept waiting by a grandchild.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

# After a kill, how long to wait for the pipes to close before giving up on them (a
# process that left the session on purpose may still hold them).
_DRAIN_S = 5.0


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process and every process of its group (its own session's group)."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (no shell; stdin is ``input`` or /dev/null) and capture its output.

    Raises subprocess.TimeoutExpired once the command and its group are killed at the
    deadline, and OSError when it cannot be started.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        _reap(proc)
        raise
    except BaseException:  # interrupted: the command must not outlive us
        kill_group(proc)
        _reap(proc)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.communicate(timeout=_DRAIN_S)
    except subprocess.TimeoutExpired:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait()
