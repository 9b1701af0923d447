"""`schedule export`: one entry per client job for cron, systemd or any scheduler."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import cli


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "strongroom.toml"
    config.write_text(
        f'[repositories.main]\nurl = "{tmp_path}/repo"\n\n[defaults]\nrepository = "main"\n\n'
        '[clients.db1]\ntransport = "local"\nsources = ["/etc"]\nschedule = "02:30"\n\n'
        '[clients.web1]\ntransport = "local"\nsources = ["/srv"]\n\n'
        '[clients.web1.jobs.logs]\nsources = ["/var/log"]\nschedule = "Mon..Fri 22:00"\n'
    )
    return config


def _recorder(tmp_path: Path) -> Path:
    """A stand-in for the strongroom program: it records the arguments it was given."""
    program = tmp_path / "bin" / "strongroom"
    program.parent.mkdir()
    program.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {tmp_path}/argv\n')
    program.chmod(0o755)
    return program


def test_crontab_has_one_line_per_job_and_the_exit_codes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    r = cli("schedule", "export", "--no-window")
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "#    21  prerequisite not met (no backup was attempted)" in lines
    assert any(line.startswith("#    22  a job hook failed") for line in lines)
    program = shutil.which("strongroom") or "strongroom"  # the scheduler's PATH is short
    assert f"30 2 * * * root {program} --config {config} run db1 --job default" in lines
    assert f"0 1 * * * root {program} --config {config} run web1 --job default" in lines
    assert any("web1/logs" in x and "not HH:MM" in x for x in lines)


def test_a_crontab_line_runs_the_job_in_the_window_of_its_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    program = _recorder(tmp_path)
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ['PATH']}")
    r = cli("schedule", "export")
    assert r.code == 0, r.stderr
    [line] = [x for x in r.stdout.splitlines() if " run db1 " in x]
    minute, hour, _, _, _, user, command = line.split(None, 6)
    assert (minute, hour, user) == ("30", "2", "root")
    assert command.startswith(f"{program} --config")  # found on PATH at export time
    # cron turns "\%" into "%" and hands the command to sh
    subprocess.run(["/bin/sh", "-c", command.replace("\\%", "%")], check=True)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == ["--config", str(config), "run", "db1", "--job", "default",
                    "--window", time.strftime("%Y-%m-%d")]  # fmt: skip


def test_jitter_spreads_clients_the_same_way_every_time(tmp_path: Path) -> None:
    _config(tmp_path)
    first = json.loads(cli("schedule", "export", "--format", "json", "--jitter", "1h").stdout)
    again = json.loads(cli("schedule", "export", "--format", "json", "--jitter", "1h").stdout)
    assert first == again
    assert all(0 <= e["offset_s"] <= 3600 for e in first)
    assert {(e["client"], e["job"]) for e in first} == {
        ("db1", "default"),
        ("web1", "default"),
        ("web1", "logs"),
    }
    assert {e["window_format"] for e in first} == {"%F"}
    db1 = next(e for e in first if e["client"] == "db1")
    assert db1["on_calendar"] == "*-*-* 02:30:00" and db1["command"][-4:] == [
        "run", "db1", "--job", "default",
    ]  # fmt: skip


def test_systemd_units_have_a_calendar_and_treat_3_as_success(tmp_path: Path) -> None:
    _config(tmp_path)
    r = cli("schedule", "export", "--format", "systemd", "--jitter", "15m")
    assert r.code == 0
    assert "OnCalendar=*-*-* 02:30:00" in r.stdout
    assert "OnCalendar=Mon..Fri 22:00" in r.stdout
    assert r.stdout.count("SuccessExitStatus=3") == 3
    assert "RandomizedDelaySec=900" in r.stdout
    assert "# ---- strongroom-web1-logs.timer ----" in r.stdout
    assert "#    20  client unreachable" in r.stdout


def test_systemd_units_written_to_a_directory_pass_systemd_analyze(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is required under CI=true (Debian: systemd)")
        pytest.skip("systemd-analyze is not installed")
    config = _config(tmp_path)
    (tmp_path / "my config.toml").write_text(config.read_text())
    program = _recorder(tmp_path)
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ['PATH']}")
    units = tmp_path / "units"
    r = cli("--config", str(tmp_path / "my config.toml"), "schedule", "export",
            "--format", "systemd", "--output-dir", str(units))  # fmt: skip
    assert r.code == 0, r.stderr
    names = sorted(p.name for p in units.iterdir())
    assert names == sorted(
        f"strongroom-{unit}.{kind}"
        for unit in ("db1-default", "web1-default", "web1-logs")
        for kind in ("service", "timer")
    )
    for unit in units.iterdir():
        check = subprocess.run(
            [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        assert "is not executable" not in check.stderr, check.stderr
    # ExecStart= as systemd runs it: $$ and %% are its escapes for $ and %.
    service = (units / "strongroom-db1-default.service").read_text()
    [exec_start] = [x for x in service.splitlines() if x.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart=").replace("$$", "$").replace("%%", "%"))
    subprocess.run(argv, check=True)
    assert (tmp_path / "argv").read_text().splitlines() == [
        "--config", str(tmp_path / "my config.toml"), "run", "db1", "--job", "default",
        "--window", time.strftime("%Y-%m-%d"),
    ]  # fmt: skip
