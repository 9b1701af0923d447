"""Job streams on a local client: run on the director, stored below /stdin; a failing or
overdue one fails the run (exit 1, no snapshot, recorded as failed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import cli, repo_with_password_file

MP = pytest.MonkeyPatch
DUMP = "import sys; sys.stdout.buffer.write(b'COPY t FROM stdin;\\n' * 200000)"


def _fleet(tmp_path: Path, monkeypatch: MP, streams: str, sources: bool = True) -> Path:
    repo = repo_with_password_file(tmp_path)
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    src = tmp_path / "srv"
    src.mkdir()
    (src / "app.conf").write_text("db = app\n")
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        f'[clients.db]\ntransport = "local"\n'
        + (f'sources = ["{src}"]\n' if sources else "")
        + f"streams = {streams}\n\n"
        '[[clients.db.hooks]]\nwhen = "failure"\non = "director"\n'
        f"command = {json.dumps(['touch', str(tmp_path / 'failure-ran')])}\n"
    )
    return tmp_path


def _run(client: str = "db") -> tuple[int, dict[str, object]]:
    r = cli("run", client, "--json")
    return r.code, json.loads(r.stdout.splitlines()[-1])


def _stream(name: str, command: list[str], extra: str = "") -> str:
    return f"{{ name = {json.dumps(name)}, command = {json.dumps(command)}{extra} }}"


def test_job_streams_are_stored_beside_the_sources(tmp_path: Path, monkeypatch: MP) -> None:
    streams = "[" + ", ".join([
        _stream("sql/app.dump", [sys.executable, "-c", DUMP]),
        # `on` is where the command runs; a local client's director is the client.
        _stream("whoami", ["sh", "-c", "echo $STRONGROOM_CLIENT/$STRONGROOM_JOB"],
                ', on = "client"'),
    ]) + "]"  # fmt: skip
    fleet = _fleet(tmp_path, monkeypatch, streams)
    code, summary = _run()
    assert code == 0, summary
    assert summary["snapshot_id"] and summary["files"] == 3
    assert summary["bytes_read"] == 19 * 200000 + len("db = app\n") + len("db/default\n")

    dump = cli("--repo", "main", "dump", "latest", "/stdin/sql/app.dump")
    assert dump.code == 0 and dump.stdout_bytes == b"COPY t FROM stdin;\n" * 200000
    assert cli("--repo", "main", "dump", "latest", "/stdin/whoami").stdout == "db/default\n"
    hits = json.loads(cli("find", "app.dump", "--json").stdout)
    assert [(h["client"], h["path"]) for h in hits] == [("db", "/stdin/sql/app.dump")]

    target = fleet / "restored"
    assert cli("--repo", "main", "restore", "latest", "--target", str(target)).code == 0
    assert (target / "stdin/sql/app.dump").read_bytes() == b"COPY t FROM stdin;\n" * 200000
    assert (target / str(fleet / "srv/app.conf").lstrip("/")).read_text() == "db = app\n"

    code, summary = _run()
    assert code == 0 and int(summary["bytes_new"]) < 100_000  # type: ignore[call-overload]


def test_a_job_of_streams_alone_runs(tmp_path: Path, monkeypatch: MP) -> None:
    _fleet(tmp_path, monkeypatch, "[" + _stream("only", ["echo", "alone"]) + "]", sources=False)
    code, summary = _run()
    assert code == 0, summary
    snaps = json.loads(cli("--repo", "main", "snapshots", "--json").stdout)
    assert [s["paths"] for s in snaps] == [["/stdin/only"]]


def _assert_failed_without_snapshot(fleet: Path, summary: dict[str, object]) -> None:
    assert summary["snapshot_id"] is None and summary["status"] == "failed"
    assert json.loads(cli("--repo", "main", "snapshots", "--json").stdout) == []
    status = json.loads(cli("status", "--json").stdout)
    last = {c["client"]: c["last_run"] for c in status["clients"]}["db"]
    assert (last["status"], last["exit_code"]) == ("failed", 1)
    assert (fleet / "failure-ran").exists()


def test_a_failing_stream_fails_the_run(tmp_path: Path, monkeypatch: MP) -> None:
    failing = ["sh", "-c", "echo partial; echo 'pg_dump: error: no such database' >&2; exit 2"]
    streams = "[" + _stream("ok", ["echo", "fine"]) + ", " + _stream("app.dump", failing) + "]"
    fleet = _fleet(tmp_path, monkeypatch, streams)
    code, summary = _run()
    assert code == 1, summary
    message = str(summary["message"])
    assert "stream app.dump (command: sh -c" in message and "exited with code 2" in message
    assert "no such database" in message
    _assert_failed_without_snapshot(fleet, summary)


def test_a_stream_past_its_timeout_fails_the_run(tmp_path: Path, monkeypatch: MP) -> None:
    slow = _stream("slow.dump", ["sh", "-c", "echo started; sleep 120"], ', timeout = "1s"')
    fleet = _fleet(tmp_path, monkeypatch, f"[{slow}]")
    code, summary = _run()
    assert code == 1, summary
    assert "stream slow.dump (command: sh -c 'echo started; sleep 120') was killed after " \
        "its 1s timeout" in str(summary["message"])  # fmt: skip
    _assert_failed_without_snapshot(fleet, summary)


def test_streams_sharing_a_place_are_a_configuration_error(tmp_path: Path, monkeypatch: MP) -> None:
    streams = "[" + _stream("sql", ["true"]) + ", " + _stream("sql/app.dump", ["true"]) + "]"
    _fleet(tmp_path, monkeypatch, streams)
    code, summary = _run()
    assert code == 2 and "would share a place" in str(summary["message"])
