"""Two directors, one repository, one PostgreSQL catalog: they work side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import cli, repo_with_password_file

CLIENTS = [f"node{i}" for i in range(6)]


def _director(config: Path, home: Path, *run_args: str) -> subprocess.Popen[bytes]:
    """`strongroom run` as a director of its own: its own state (job locks) and cache
    directories, the shared config and catalog, the password from the config."""
    env = {
        **os.environ,
        "STRONGROOM_STATE_DIR": str(home / "state"),
        "STRONGROOM_CACHE_DIR": str(home / "cache"),
    }
    env.pop("STRONGROOM_PASSWORD", None)
    return subprocess.Popen(
        [sys.executable, "-m", "strongroom", "--config", str(config), "--json", "run",
         *run_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip


def test_two_directors_share_a_repository_and_a_postgresql_catalog(
    tmp_path: Path, postgres_url: str
) -> None:
    repo = repo_with_password_file(tmp_path)
    blocks = []
    for name in CLIENTS:
        src = tmp_path / "data" / name
        src.mkdir(parents=True)
        (src / "common.bin").write_bytes(b"fleet-wide data " * 50_000)
        (src / "own.txt").write_text(f"{name}\n" * 1000)
        blocks.append(f'[clients.{name}]\ntransport = "local"\nsources = ["{src}"]\n')
    config = tmp_path / "strongroom.toml"
    config.write_text(
        f'[catalog]\nurl = "{postgres_url}"\n\n'
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n' + "\n".join(blocks)
    )
    assert cli("--config", str(config), "catalog", "migrate").code == 0

    def director(n: int, clients: list[str]) -> subprocess.Popen[bytes]:
        return _director(config, tmp_path / f"director{n}", *clients, "--parallel", "2")

    a, b = director(1, CLIENTS[:3]), director(2, CLIENTS[3:])
    outputs = [p.communicate(timeout=300) for p in (a, b)]
    for p, (_out, err) in zip((a, b), outputs, strict=True):
        assert p.returncode == 0, err.decode()
    summaries = [json.loads(line) for out, _ in outputs for line in out.decode().splitlines()]
    assert sorted(s["client"] for s in summaries) == CLIENTS

    status = json.loads(cli("--config", str(config), "status", "--json").stdout)
    assert {c["client"]: c["last_run"]["status"] for c in status["clients"]} == dict.fromkeys(
        CLIENTS, "succeeded"
    )
    hits = json.loads(cli("--config", str(config), "find", "own.txt", "--json").stdout)
    assert sorted(h["client"] for h in hits) == CLIENTS
    r = cli("--repo", str(repo), "check", "--read-data")
    assert r.code == 0, r.stderr
    # The shared file is stored once for the whole fleet.
    stored = sum(f.stat().st_size for f in (repo / "data").rglob("*") if f.is_file())
    assert stored < 2 * 800_000


def test_two_directors_never_run_the_same_job_at_once(tmp_path: Path, postgres_url: str) -> None:
    """The job lock is the catalog's: a second director waits or exits 11 and names the
    first; a director killed mid-run leaves no lock behind."""
    repo = repo_with_password_file(tmp_path)
    src = tmp_path / "data"
    src.mkdir()
    (src / "file").write_text("x" * 1000)
    started = tmp_path / "started"
    slow = json.dumps(["sh", "-c", f'touch "{started}"; sleep "$(cat {tmp_path}/sleep)"'])
    (tmp_path / "sleep").write_text("4")
    config = tmp_path / "strongroom.toml"
    config.write_text(
        f'[catalog]\nurl = "{postgres_url}"\n\n'
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\nnotify = ["log"]\n\n'
        f'[clients.web01]\ntransport = "local"\nsources = ["{src}"]\n\n'
        f'[[clients.web01.hooks]]\nwhen = "before"\non = "director"\ncommand = {slow}\n\n'
        '[notify.log]\nkind = "command"\n'
        f'command = ["sh", "-c", "cat >> {tmp_path}/events && echo >> {tmp_path}/events"]\n'
    )
    assert cli("--config", str(config), "catalog", "migrate").code == 0

    def director(n: int, *args: str) -> subprocess.Popen[bytes]:
        return _director(config, tmp_path / f"director{n}", "web01", *args)

    def wait_for_start() -> None:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "the first run never started its hook"
            time.sleep(0.05)
        started.unlink()

    first = director(1)
    wait_for_start()
    second = director(2)  # another director, its own state dir: only the catalog knows
    out, err = second.communicate(timeout=120)
    assert second.returncode == 11, out.decode() + err.decode()
    summary = json.loads(out.decode().splitlines()[-1])
    assert "web01/default is already running (on director" in summary["message"]
    waiting = director(2, "--wait", "2m")  # waits for the first, then runs
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err.decode()

    # A director killed while it holds the lock: its session ends, and the lock with it.
    (tmp_path / "sleep").write_text("60")
    started.unlink()  # the waiting run's hook left it
    doomed = director(1)
    wait_for_start()
    doomed.kill()
    doomed.communicate(timeout=30)
    (tmp_path / "sleep").write_text("0")
    out, err = director(2, "--wait", "30s").communicate(timeout=120)
    assert json.loads(out.decode().splitlines()[-1])["exit_code"] == 0, err.decode()
    # The killed run is recorded as ended (130, interrupted), not running forever.
    report = json.loads(cli("--config", str(config), "report", "--format", "json").stdout)
    runs = sorted(report["runs"], key=lambda run: run["started_at"])
    assert [run["exit_code"] for run in runs] == [0, 0, 130, 0], runs
    assert runs[2]["status"] == "failed"
    assert "interrupted: director" in runs[2]["message"], runs[2]
    # ... and the event that run never sent is sent for it, once.
    events = [json.loads(line) for line in (tmp_path / "events").read_text().splitlines()]
    ended = [e for e in events if e["run_id"] == runs[2]["run_id"] and e["event"] != "run.started"]
    assert [(e["event"], e["exit_code"]) for e in ended] == [("run.failed", 130)], ended
