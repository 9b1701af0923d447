"""Job hooks: before (a failure means exit 22 and no snapshot), after, and on failure."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import cli, repo_with_password_file

MP = pytest.MonkeyPatch


def _fleet(tmp_path: Path, monkeypatch: MP, before: str, after: str) -> Path:
    repo = repo_with_password_file(tmp_path)
    monkeypatch.delenv("STRONGROOM_PASSWORD")  # the config's password_file must suffice
    src = tmp_path / "srv"
    src.mkdir(exist_ok=True)
    (src / "data").write_text("x" * 1000)
    hook = '[[clients.web.hooks]]\nwhen = "{}"\non = "director"\ncommand = {}\n'
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        f'[clients.web]\ntransport = "local"\nsources = ["{src}"]\n\n'
        + hook.format("before", before)
        + hook.format("after", after)
        + hook.format("failure", json.dumps(["touch", str(tmp_path / "failure-ran")]))
    )
    return tmp_path


def _run() -> tuple[int, dict[str, object]]:
    r = cli("run", "web", "--json")
    return r.code, json.loads(r.stdout.splitlines()[-1])


def test_hooks_run_around_a_good_backup(tmp_path: Path, monkeypatch: MP) -> None:
    fleet = _fleet(
        tmp_path, monkeypatch, '["true"]', json.dumps(["touch", str(tmp_path / "after-ran")])
    )
    code, summary = _run()
    assert code == 0, summary
    assert summary["snapshot_id"]
    assert (fleet / "after-ran").exists() and not (fleet / "failure-ran").exists()


def test_a_failing_before_hook_is_exit_22_without_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = _fleet(
        tmp_path, monkeypatch, '["sh", "-c", "echo dump locked >&2; exit 3"]', '["true"]'
    )
    code, summary = _run()
    assert code == 22
    assert summary["snapshot_id"] is None
    assert "before hook sh -c" in str(summary["message"]) and "dump locked" in str(
        summary["message"]
    )
    assert (fleet / "failure-ran").exists()
    r = cli("--repo", "main", "snapshots", "--json")
    assert json.loads(r.stdout) == []


def test_a_failing_after_hook_is_exit_22_and_keeps_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = _fleet(tmp_path, monkeypatch, '["true"]', '["false"]')
    code, summary = _run()
    assert code == 22 and summary["snapshot_id"]
    assert "after hook false: exit 1" in str(summary["message"])
    assert "the snapshot was written and is kept" in str(summary["message"])
    assert "nothing was backed up" not in str(summary["message"])
    assert (fleet / "failure-ran").exists()
    r = cli("--repo", "main", "snapshots", "--json")
    assert [s["id"] for s in json.loads(r.stdout)] == [summary["snapshot_id"]]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_hook_past_its_timeout_is_stopped_with_everything_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "sleeper.pid"
    # The shell starts a long sleep and waits for it: killing only the shell would
    # leave the sleep running, holding the hook's output pipe open.
    hook = ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    fleet = _fleet(tmp_path, monkeypatch, json.dumps(hook), '["true"]')
    config = fleet / "strongroom.toml"
    config.write_text(config.read_text().replace(
        'when = "before"\n', 'when = "before"\ntimeout = "1s"\n'))  # fmt: skip
    started = time.monotonic()
    code, summary = _run()
    assert time.monotonic() - started < 20
    assert code == 22 and summary["snapshot_id"] is None
    assert "timed out after 1s" in str(summary["message"])
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the hook's child outlived its timeout"
