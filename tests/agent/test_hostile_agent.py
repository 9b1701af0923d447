"""R17: a client (its agent) can neither rewrite nor read the repository's history."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from strongroom.backend import LocalBackend
from strongroom.repository import Repository, Snapshot
from tests.agent.conftest import Sshd
from tests.conftest import PASSWORD, cli

FAKE = Path(__file__).with_name("fake_agent.py")


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd: Sshd) -> Path:
    repo = tmp_path / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    src = tmp_path / "honest"
    src.mkdir()
    (src / "payroll.txt").write_text("salaries\n" * 1000)
    assert cli("--repo", str(repo), "backup", "--client", "hr", str(src)).code == 0
    (tmp_path / "pass").write_text(PASSWORD)
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        # Preflight connects to the port first: point it at something that listens.
        f'[clients.evil]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = {sshd.port}\n'
        # ssh_command is replaced by a shell that runs the hostile agent in place of ssh.
        f'ssh_command = ["sh", "-c", "exec {sys.executable} {FAKE}", "fake-ssh"]\n'
        f'sources = ["{tmp_path}"]\n'
    )
    monkeypatch.setenv("FAKE_AGENT_LOG", str(tmp_path / "agent-saw.json"))
    return tmp_path


def _restores_exactly(tmp: Path) -> None:
    target = tmp / "after"
    r = cli("--repo", str(tmp / "repo"), "restore", "latest", "--client", "hr", "--target",
            str(target))  # fmt: skip
    assert r.code == 0, r.stderr
    restored = target / str(tmp / "honest").lstrip("/") / "payroll.txt"
    assert restored.read_text() == "salaries\n" * 1000
    assert cli("--repo", str(tmp / "repo"), "check", "--read-data").code == 0


def test_an_agent_that_asks_to_delete_is_refused(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", "remove")
    r = cli("run", "evil", "--json")
    assert r.code == 1, r.stdout + r.stderr
    assert "unexpected message 'remove'" in r.stdout
    _restores_exactly(setup)
    # What the agent was given: chunk naming and cut points, never the encryption key.
    saw = json.loads((setup / "agent-saw.json").read_text())
    assert "id_key" in saw and not any("encrypt" in k or "password" in k for k in saw)


@pytest.mark.parametrize(
    ("mode", "refusal"),
    [
        ("many", "known_many takes at most 65536 ids of 32 bytes"),
        ("short-ids", "claim_many takes at most 65536 ids of 32 bytes"),
        ("many-blobs", "store_many takes at most 256 blobs"),
    ],
)
def test_an_agent_sending_too_many_or_malformed_ids_is_refused(
    setup: Path, monkeypatch: pytest.MonkeyPatch, mode: str, refusal: str
) -> None:
    monkeypatch.setenv("FAKE_AGENT_MODE", mode)
    r = cli("run", "evil", "--json")
    assert r.code == 1, r.stdout + r.stderr
    assert refusal in r.stdout
    _restores_exactly(setup)


def test_an_agent_cannot_store_forged_data_under_a_known_id(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.open(LocalBackend(setup / "repo"), PASSWORD.encode())
    repo.load_index()
    victim = next(iter(repo.index.by_pack().values()))[0][0]  # a 16-byte prefix is enough
    full = next(bid for bid in _all_ids(repo) if bid.startswith(victim))
    monkeypatch.setenv("FAKE_AGENT_MODE", "poison")
    monkeypatch.setenv("FAKE_AGENT_VICTIM", full.hex())
    r = cli("run", "evil", "--json")
    assert r.code in (1, 13), r.stdout + r.stderr
    _restores_exactly(setup)


def _all_ids(repo: Repository, snapshots: list[Snapshot] | None = None) -> list[bytes]:
    from strongroom.engine.walk import walk

    ids: list[bytes] = []
    for snap in repo.snapshots() if snapshots is None else snapshots:
        ids.append(snap.tree)
        for _, node in walk(repo, snap.tree):
            ids.extend(c for c in node.content if isinstance(c, bytes))
            if node.subtree:
                ids.append(node.subtree)
    return ids


def test_a_restore_agent_cannot_read_data_outside_its_snapshot(
    setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = setup / "mine"
    src.mkdir()
    (src / "note").write_text("the evil client's own file\n")
    assert cli("--repo", str(setup / "repo"), "backup", "--client", "evil", str(src)).code == 0
    repo = Repository.open(LocalBackend(setup / "repo"), PASSWORD.encode())
    repo.load_index()
    hr = next(s for s in repo.snapshots() if s.client == "hr")
    payroll = next(i for i in _all_ids(repo, [hr]) if i != hr.tree)
    monkeypatch.setenv("FAKE_AGENT_MODE", "steal")
    monkeypatch.setenv("FAKE_AGENT_VICTIM", payroll.hex())
    r = cli("--repo", str(setup / "repo"), "restore", "latest", "--client", "evil",
            "--to-client", "evil", "--target", str(setup / "t"))  # fmt: skip
    assert r.code == 1, r.stderr
    assert "outside the snapshot" in r.stderr
