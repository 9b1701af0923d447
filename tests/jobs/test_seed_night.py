"""The seed night, end to end: a scheduler runs `strongroom run CLIENT` for each client
(real processes, as cron would, all at once), the upstream dump job marks its work, the
monitoring runs `status --stale`, and the on-call pager gets exactly what it should."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, cli, cli_subprocess
from tests.notify.servers import closed_port

PAGER_EVENTS = ["run.failed", "client.unreachable", "prerequisite.failed", "client.stale"]
NIGHT = "2026-11-25"


def strongroom(*args: str) -> subprocess.CompletedProcess[bytes]:
    return cli_subprocess(list(args), timeout=120)


def summary(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    lines = [json.loads(x) for x in proc.stdout.decode().splitlines() if x.strip()]
    assert lines and lines[-1]["type"] == "summary", proc.stdout + proc.stderr
    return dict(lines[-1])


def pages(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# What the operator looks at afterwards is read in-process (quicker, same code).


def snapshots(repo: Path, client: str) -> list[str]:
    r = cli("--repo", str(repo), "snapshots", "--client", client, "--json")
    assert r.code == 0, r.stderr
    return [s["id"] for s in json.loads(r.stdout)]


def outbox(*args: str) -> list[dict[str, object]]:
    r = cli("events", "list", "--json", *args)
    assert r.code == 0, r.stderr
    return list(json.loads(r.stdout))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = tmp_path / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    monkeypatch.delenv("STRONGROOM_PASSWORD")  # the config's password_file must suffice
    (tmp_path / "main.pass").write_text(PASSWORD + "\n")
    for client in ("db1", "web1"):
        (tmp_path / "srv" / client).mkdir(parents=True)
        (tmp_path / "srv" / client / "data.txt").write_text(f"{client} data\n" * 200)
    pager = tmp_path / "page-oncall"
    # Runs deliver their pages concurrently: one page at a time, or two interleave.
    pager.write_text(
        f'#!/bin/sh\nexec flock "{tmp_path}/pages.lock" '
        f"sh -c '{{ cat; echo; }} >> \"{tmp_path}/pages.jsonl\"'\n"
    )
    pager.chmod(0o755)
    return tmp_path


def test_the_seed_night(site: Path) -> None:
    with closed_port() as ghost_port:
        (site / "strongroom.toml").write_text(
            f'[catalog]\nurl = "sqlite:///{site}/catalog.db"\n\n'
            f'[repositories.main]\nurl = "{site}/repo"\npassword_file = "main.pass"\n\n'
            '[defaults]\nrepository = "main"\nnotify = ["pager"]\n\n'
            f'[notify.pager]\nkind = "command"\ncommand = ["{site}/page-oncall"]\n'
            f"events = {json.dumps(PAGER_EVENTS)}\n\n"
            f'[clients.db1]\ntransport = "local"\nsources = ["{site}/srv/db1"]\n'
            '[[clients.db1.requires]]\nkind = "marker"\nname = "sql-dump"\nmax_age = "12h"\n\n'
            f'[clients.web1]\ntransport = "local"\nsources = ["{site}/srv/web1"]\n\n'
            f'[clients.ghost]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = {ghost_port}\n'
            'sources = ["/etc"]\n\n'
            f'[clients.never]\ntransport = "local"\nsources = ["{site}/srv/never"]\n'
        )
        check = cli("config", "check")
        assert check.code == 0, check.stderr

        # The scheduler's entries, as `schedule export` gives them: one per client.
        export = cli("schedule", "export", "--format", "json",
                     "--program", f"{sys.executable} -m strongroom")  # fmt: skip
        assert export.code == 0, export.stderr
        entries = {e["client"]: e for e in json.loads(export.stdout)}
        clients = ["db1", "web1", "ghost", "never"]
        assert sorted(entries) == sorted(clients)
        assert {e["window_format"] for e in entries.values()} == {"%F"}

        def scheduled(client: str) -> subprocess.CompletedProcess[bytes]:
            command = [*entries[client]["command"], "--window", NIGHT, "--json"]
            return subprocess.run(command, capture_output=True, timeout=120, check=False)

        # Night 1: the scheduler starts one `strongroom run CLIENT` per client, at once.
        with ThreadPoolExecutor(len(clients)) as pool:
            procs = dict(zip(clients, pool.map(scheduled, clients), strict=True))
        codes = {c: p.returncode for c, p in procs.items()}
        assert codes == {"db1": 21, "web1": 0, "ghost": 20, "never": 2}, {
            c: p.stderr.decode() for c, p in procs.items()
        }
        night1 = {c: summary(p) for c, p in procs.items()}
        assert "marker sql-dump (never marked)" in str(night1["db1"]["message"])
        assert f"127.0.0.1:{ghost_port}" in str(night1["ghost"]["message"])

        web1_snapshot = night1["web1"]["snapshot_id"]
        assert web1_snapshot and snapshots(site / "repo", "web1") == [web1_snapshot]
        assert snapshots(site / "repo", "db1") == []
        [ok] = outbox("--client", "web1", "--event", "run.succeeded")
        assert ok["run_id"] == night1["web1"]["run_id"]
        assert ok["details"]["snapshot_id"] == web1_snapshot  # type: ignore[index]
        assert ok["deliveries"] == []  # the pager does not want successes

        paged = {str(p["client"]): p for p in pages(site / "pages.jsonl")}
        assert sorted(paged) == ["db1", "ghost", "never"]
        assert paged["db1"]["event"] == "prerequisite.failed"
        assert paged["db1"]["exit_code"] == 21 and "sql-dump" in str(paged["db1"]["message"])
        assert paged["db1"]["details"]["unmet"] == [  # type: ignore[index]
            {"requirement": "marker sql-dump", "reason": "never marked"}
        ]
        assert (paged["ghost"]["event"], paged["ghost"]["exit_code"]) == ("client.unreachable", 20)
        assert (paged["never"]["event"], paged["never"]["exit_code"]) == ("run.failed", 2)
        for client, page in paged.items():
            assert page["run_id"] == night1[client]["run_id"]

        # The upstream dump job finishes and says so; the scheduler's retries of the
        # night back db1 up, and leave web1, which succeeded, alone.
        assert strongroom("mark", "sql-dump", "--client", "db1").returncode == 0
        proc = scheduled("db1")
        assert proc.returncode == 0, proc.stderr
        db1 = summary(proc)
        assert db1["snapshot_id"] and snapshots(site / "repo", "db1") == [db1["snapshot_id"]]
        [ok] = outbox("--client", "db1", "--event", "run.succeeded")
        assert ok["run_id"] == db1["run_id"]
        retry = scheduled("web1")
        assert retry.returncode == 0, retry.stderr
        assert summary(retry)["existing_run_id"] == night1["web1"]["run_id"]
        assert snapshots(site / "repo", "web1") == [web1_snapshot]
        assert len(outbox("--client", "web1", "--event", "run.succeeded")) == 1

        # The next dump fails: the next run refuses again, and pages.
        mark = strongroom("mark", "sql-dump", "--client", "db1", "--failed", "--note", "disk full")
        assert mark.returncode == 0
        proc = strongroom("run", "db1", "--json")
        assert proc.returncode == 21
        assert "marked FAILED" in str(summary(proc)["message"])
        assert len(snapshots(site / "repo", "db1")) == 1
        last = pages(site / "pages.jsonl")[-1]
        assert (last["client"], last["event"]) == ("db1", "prerequisite.failed")
        assert "disk full" in str(last["message"])

        # Monitoring: never and ghost never succeeded; db1 did today, web1 too.
        before = len(pages(site / "pages.jsonl"))
        for _ in range(2):  # the monitor runs every hour: one page per client and day
            proc = strongroom("status", "--stale", "1d", "--json")
            assert proc.returncode == 1, proc.stderr
            stale = {s["client"]: s["last_success"] for s in json.loads(proc.stdout)["stale"]}
            assert stale == {"ghost": None, "never": None}
        stale_pages = pages(site / "pages.jsonl")[before:]
        assert sorted((p["event"], p["client"]) for p in stale_pages) == [
            ("client.stale", "ghost"),
            ("client.stale", "never"),
        ]
        assert len(outbox("--event", "client.stale")) == 2
        assert outbox("--pending") == []  # every page was delivered

        proc = strongroom("status", "--stale", "1d")
        assert proc.returncode == 1
        assert "STALE ghost: never succeeded" in proc.stderr.decode()
        assert "STALE never: never succeeded" in proc.stderr.decode()
        assert "web1" not in proc.stderr.decode() and "db1" not in proc.stderr.decode()
