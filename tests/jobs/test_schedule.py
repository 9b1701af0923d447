"""`schedule export`: one entry per client job for cron, systemd or any scheduler."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_crontab_has_one_line_per_job_and_the_exit_codes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    r = cli("schedule", "export")
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "#    21  prerequisite not met (no backup was attempted)" in lines
    assert f"30 2 * * * root strongroom --config {config} run db1 --job default" in lines
    assert f"0 1 * * * root strongroom --config {config} run web1 --job default" in lines
    assert any("web1/logs" in x and "not HH:MM" in x for x in lines)


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


def test_systemd_units_have_a_calendar_and_treat_3_as_success(tmp_path: Path) -> None:
    _config(tmp_path)
    r = cli("schedule", "export", "--format", "systemd", "--jitter", "15m")
    assert r.code == 0
    assert "OnCalendar=*-*-* 02:30:00" in r.stdout
    assert "OnCalendar=Mon..Fri 22:00" in r.stdout
    assert r.stdout.count("SuccessExitStatus=3") == 3
    assert "RandomizedDelaySec=900" in r.stdout
    assert "# ---- strongroom-web1-logs.timer ----" in r.stdout
