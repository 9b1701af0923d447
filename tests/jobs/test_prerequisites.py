"""Prerequisites: no backup unless the SQL dump is marked done, the file is fresh, the
command agrees and the client answers; exit 21 (or 20) and the reason otherwise."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import cli, repo_with_password_file


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = repo_with_password_file(tmp_path)
    src = tmp_path / "srv"
    src.mkdir()
    (src / "dump.sql").write_text("-- a dump\n" * 200)
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        f'[clients.dracula]\ntransport = "local"\nsources = ["{src}"]\n\n'
        '[[clients.dracula.requires]]\nkind = "marker"\nname = "sql-dump"\nmax_age = "2s"\n\n'
        '[[clients.dracula.requires]]\nkind = "fresh-file"\n'
        f'path = "{src}/dump.sql"\nmax_age = "1h"\nmin_size = "1KiB"\n\n'
        '[[clients.dracula.requires]]\nkind = "command"\n'
        f'command = ["test", "!", "-e", "{tmp_path}/maintenance"]\n\n'
        '[clients.offline]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = 9\n'
        f'sources = ["{src}"]\n'
    )
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    return tmp_path


def _run(client: str = "dracula") -> tuple[int, dict[str, object]]:
    r = cli("run", client, "--json")
    return r.code, json.loads(r.stdout.splitlines()[-1])


def _snapshots(fleet: Path) -> list[dict[str, object]]:
    r = cli("--repo", str(fleet / "repo"), "snapshots", "--json")
    assert r.code == 0, r.stderr
    return list(json.loads(r.stdout))


def test_a_missing_marker_stops_the_backup_with_exit_21(fleet: Path) -> None:
    code, summary = _run()
    assert code == 21
    assert "marker sql-dump (never marked)" in str(summary["message"])
    assert summary["snapshot_id"] is None and _snapshots(fleet) == []
    assert cli("preflight", "dracula").code == 21


def test_a_fresh_marker_lets_it_run_and_the_snapshot_records_the_evidence(fleet: Path) -> None:
    assert cli("mark", "sql-dump", "--client", "dracula", "--note", "pg_dump ok").code == 0
    r = cli("preflight", "dracula", "--json")
    assert r.code == 0, r.stderr
    assert all(c["met"] for c in json.loads(r.stdout)["checks"])
    before = datetime.now(UTC).replace(microsecond=0)
    code, summary = _run()
    assert code == 0, summary
    [snap] = _snapshots(fleet)
    assert snap["id"] == summary["snapshot_id"]
    evidence = {p.split(": met at ")[0]: p for p in snap["prerequisites"]}
    assert list(evidence) == [
        "reachable",
        "marker sql-dump",
        f"fresh-file {fleet}/srv/dump.sql",
        f"command test '!' -e {fleet}/maintenance",
    ], snap["prerequisites"]
    # which were met, when they were checked, and the evidence
    marker = evidence["marker sql-dump"]
    checked = datetime.fromisoformat(marker.split(" met at ")[1].split(" ")[0])
    assert before <= checked <= datetime.now(UTC)
    assert "(marked at " in marker and "note: pg_dump ok" in marker
    assert "2000 bytes" in evidence[f"fresh-file {fleet}/srv/dump.sql"]
    assert "(exit 0 after" in evidence[f"command test '!' -e {fleet}/maintenance"]


def test_preflight_lists_every_check_met_or_not(fleet: Path) -> None:
    (fleet / "maintenance").touch()
    r = cli("preflight", "dracula", "--json")
    assert r.code == 21
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 21
    assert [(c["name"].split()[0], c["met"]) for c in doc["checks"]] == [
        ("reachable", True), ("marker", False), ("fresh-file", True), ("command", False),
    ]  # fmt: skip
    assert all(c["checked_at"] for c in doc["checks"])
    r = cli("preflight", "dracula")
    assert r.code == 21
    assert "marker sql-dump: NOT met at " in r.stdout and "(never marked)" in r.stdout
    assert "not ready: marker sql-dump, command test" in r.stderr
    assert _snapshots(fleet) == []


def test_a_failed_or_stale_marker_stops_the_backup(fleet: Path) -> None:
    assert (
        cli("mark", "sql-dump", "--client", "dracula", "--failed", "--note", "disk full").code == 0
    )
    code, summary = _run()
    assert code == 21 and "marked FAILED" in str(summary["message"])
    assert "disk full" in str(summary["message"])
    assert cli("mark", "sql-dump", "--client", "dracula").code == 0
    time.sleep(2.2)  # max_age is 2s
    code, summary = _run()
    assert code == 21 and "older than 2s" in str(summary["message"])


def test_stale_file_and_failing_command_are_named(fleet: Path) -> None:
    assert cli("mark", "sql-dump", "--client", "dracula").code == 0
    dump = fleet / "srv" / "dump.sql"
    os.utime(dump, (time.time() - 7200, time.time() - 7200))
    (fleet / "maintenance").touch()
    code, summary = _run()
    assert code == 21
    message = str(summary["message"])
    assert "fresh-file" in message and "older than 1h" in message
    assert "command test '!' -e" in message and "maintenance (exit 1" in message
    assert _snapshots(fleet) == []


def test_a_file_smaller_than_min_size_is_not_fresh_enough(fleet: Path) -> None:
    assert cli("mark", "sql-dump", "--client", "dracula").code == 0
    (fleet / "srv" / "dump.sql").write_text("-- truncated\n")
    code, summary = _run()
    assert code == 21
    assert "fresh-file" in str(summary["message"])
    assert "13 bytes, less than min_size (1024 bytes)" in str(summary["message"])
    assert _snapshots(fleet) == []


def test_an_unreachable_client_is_exit_20_before_anything_else(fleet: Path) -> None:
    code, summary = _run("offline")
    assert code == 20 and "127.0.0.1:9" in str(summary["message"])
    assert cli("preflight", "offline").code == 20


def test_mark_refuses_an_unknown_client(fleet: Path) -> None:
    r = cli("mark", "sql-dump", "--client", "nosuch")
    assert r.code == 2 and "nosuch" in r.stderr
