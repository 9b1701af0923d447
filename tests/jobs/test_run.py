"""`strongroom run` on configured local clients, with the catalog behind it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strongroom.clock import SystemClock
from strongroom.jobs.locks import JobLock
from strongroom.jobs.run import worst_exit_code
from tests.conftest import PASSWORD, cli


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config with three local clients sharing one repository."""
    repo = tmp_path / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    (tmp_path / "pass").write_text(PASSWORD + "\n")
    for name in ("alpha", "beta", "gamma"):
        src = tmp_path / "data" / name
        src.mkdir(parents=True)
        (src / "shared.txt").write_text("the same on every client\n" * 100)
        (src / f"{name}.txt").write_text(f"only on {name}\n")
    clients = "\n".join(
        f'[clients.{n}]\ntransport = "local"\nsources = ["{tmp_path}/data/{n}"]\n'
        f'groups = ["{"night" if n != "gamma" else "day"}"]\n'
        for n in ("alpha", "beta", "gamma")
    )
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        f'[defaults]\nrepository = "main"\n\n{clients}'
    )
    monkeypatch.delenv("STRONGROOM_PASSWORD")  # the config's password_file must suffice
    return tmp_path


def _summaries(stdout: str) -> dict[str, dict[str, object]]:
    docs = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return {str(d["client"]): d for d in docs if d["type"] == "summary"}


def test_run_all_backs_up_every_client_and_records_the_night(fleet: Path) -> None:
    r = cli("run", "--all", "--parallel", "2", "--json")
    assert r.code == 0, r.stdout + r.stderr
    runs = _summaries(r.stdout)
    assert set(runs) == {"alpha", "beta", "gamma"}
    assert all(d["exit_code"] == 0 and d["snapshot_id"] for d in runs.values())

    r = cli("status", "--json")
    assert r.code == 0
    status = json.loads(r.stdout)
    assert {c["client"]: c["last_run"]["status"] for c in status["clients"]} == dict.fromkeys(
        ("alpha", "beta", "gamma"), "succeeded"
    )

    r = cli("report", "--format", "json")
    totals = json.loads(r.stdout)["totals"]
    assert (totals["runs"], totals["succeeded"], totals["clients"]) == (3, 3, 3)
    assert "<table>" in cli("report", "--format", "html").stdout
    assert cli("report", "--format", "csv").stdout.count("\n") == 4

    r = cli("find", "beta.txt", "--json")
    hits = json.loads(r.stdout)
    assert [h["client"] for h in hits] == ["beta"]
    assert hits[0]["path"].endswith("/data/beta/beta.txt")

    # Restoring from the shared repository gets one client's files back exactly.
    target = fleet / "restored"
    r = cli("--repo", str(fleet / "repo"), "restore", "latest", "--client", "gamma",
            "--target", str(target))  # fmt: skip
    assert r.code == 3 or r.code == 0, r.stderr  # 0 unless metadata could not be set
    assert (target / str(fleet).lstrip("/") / "data/gamma/gamma.txt").read_text() == (
        "only on gamma\n"
    )


def test_run_and_the_text_report_say_what_was_read_and_stored_in_units(fleet: Path) -> None:
    r = cli("run", "alpha", "beta")
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("alpha/default: succeeded, exit 0, snapshot "), lines
    assert ": 2 new, 0 changed, 0 unchanged files; 2.5 KiB read, " in lines[0], lines[0]
    assert lines[0].endswith("s") and " stored, in " in lines[0]

    r = cli("report")
    assert r.code == 0
    total, header, *rows = r.stdout.splitlines()
    assert "2 (2 ok, 0 with warnings, 0 failed) on 2 client(s); 4.9 KiB read, " in total
    assert header.split() == [
        "started", "(UTC)", "client", "job", "status", "exit", "duration",
        "files", "read", "new", "snapshot", "message",
    ]  # fmt: skip
    assert [row.split()[1:5] for row in rows] == [
        ["alpha", "default", "succeeded", "0"],
        ["beta", "default", "succeeded", "0"],
    ]
    assert all(row.split()[6:9:2] == ["2", "KiB"] for row in rows), rows


def test_run_a_group_runs_only_its_members(fleet: Path) -> None:
    r = cli("run", "--group", "night", "--json")
    assert r.code == 0, r.stderr
    assert set(_summaries(r.stdout)) == {"alpha", "beta"}


def test_a_second_run_of_the_same_job_exits_11_at_once(fleet: Path) -> None:
    holder = JobLock(fleet / "state", "alpha", "default", SystemClock()).acquire()
    try:
        r = cli("run", "alpha", "--json")
        assert r.code == 11, r.stdout + r.stderr
        assert "already running" in _summaries(r.stdout)["alpha"]["message"]  # type: ignore[operator]
        r = cli("run", "alpha", "--wait", "1s")
        assert r.code == 11
    finally:
        holder.release()
    assert cli("run", "alpha").code == 0


def test_the_worst_exit_code_wins_and_each_run_is_reported(fleet: Path) -> None:
    (fleet / "pass").write_text("not the password\n")
    r = cli("run", "alpha", "beta", "--json")
    assert r.code == 12
    runs = _summaries(r.stdout)
    assert {d["exit_code"] for d in runs.values()} == {12}
    status = json.loads(cli("status", "--json").stdout)
    assert {c["client"]: c["last_run"]["exit_code"] for c in status["clients"]
            if c["last_run"]} == {"alpha": 12, "beta": 12}  # fmt: skip


@pytest.mark.parametrize(
    ("codes", "worst"),
    [
        ([], 0),
        ([0, 3], 3),
        ([3, 22, 21], 21),
        ([0, 20, 11], 11),
        ([12, 10], 10),
        ([13, 1], 1),
        ([22, 0, 13], 13),
    ],
)
def test_exit_code_precedence(codes: list[int], worst: int) -> None:
    assert worst_exit_code(codes) == worst


def test_status_stale_lists_clients_that_never_succeeded(fleet: Path) -> None:
    assert cli("run", "alpha").code == 0
    r = cli("status", "--stale", "1h", "--json")
    assert r.code == 1
    stale = {s["client"]: s["last_success"] for s in json.loads(r.stdout)["stale"]}
    assert stale == {"beta": None, "gamma": None}
    assert cli("run", "beta", "gamma").code == 0
    assert cli("status", "--stale", "1h").code == 0


def test_catalog_rebuild_recreates_snapshots_and_paths(fleet: Path) -> None:
    assert cli("run", "--all").code == 0
    for f in (fleet / "state").glob("catalog.db*"):
        f.unlink()
    r = cli("catalog", "rebuild")
    assert r.code == 0, r.stderr
    snaps = json.loads(cli("snapshots", "--json").stdout)
    assert sorted(s["client"] for s in snaps) == ["alpha", "beta", "gamma"]
    assert [h["client"] for h in json.loads(cli("find", "alpha.txt", "--json").stdout)] == ["alpha"]


def test_an_ssh_client_whose_host_does_not_resolve_exits_20(fleet: Path) -> None:
    config = (fleet / "strongroom.toml").read_text()
    (fleet / "strongroom.toml").write_text(
        config + '\n[clients.remote]\ntransport = "ssh"\nhost = "no-such-host.invalid"\n'
        'ssh_command = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]\n'
        'sources = ["/etc"]\n'
    )
    r = cli("run", "remote", "--json")
    assert r.code == 20, r.stdout
    assert "no-such-host.invalid" in str(_summaries(r.stdout)["remote"]["message"])


def test_dry_run_changes_nothing(fleet: Path) -> None:
    r = cli("run", "--all", "--dry-run")
    assert r.code == 0 and r.stdout.count("would run") == 3
    assert not (fleet / "state" / "catalog.db").exists()


def test_unknown_client_is_a_usage_error(fleet: Path) -> None:
    r = cli("run", "nosuch")
    assert r.code == 2 and "nosuch" in r.stderr
