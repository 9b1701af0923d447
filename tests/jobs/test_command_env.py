"""R18: the operator's commands never inherit the repository password; a pager never
inherits credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli

MARKER = "repo-password-7f3a91"


def test_hooks_prerequisites_and_streams_get_no_repository_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRONGROOM_PASSWORD", MARKER)
    monkeypatch.setenv("PGPASSWORD", "db-secret-for-pg-dump")
    assert cli("--repo", str(tmp_path / "repo"), "init").code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    dump = "env"
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{tmp_path}/repo"\n\n[defaults]\nrepository = "main"\n\n'
        f'[clients.db1]\ntransport = "local"\nsources = ["{src}"]\n'
        f'streams = [{{ name = "env.txt", command = ["sh", "-c", "{dump}"], on = "director" }}]\n'
        '[[clients.db1.hooks]]\nwhen = "before"\non = "director"\n'
        f'command = ["sh", "-c", "env > {tmp_path}/hook.env"]\n'
        '[[clients.db1.requires]]\nkind = "command"\n'
        f'command = ["sh", "-c", "env > {tmp_path}/prereq.env"]\n'
    )
    r = cli("run", "db1")
    assert r.code == 0, r.stderr
    for name in ("hook.env", "prereq.env"):
        seen = (tmp_path / name).read_text()
        assert MARKER not in seen and "STRONGROOM_CLIENT=db1" in seen
        assert "PGPASSWORD=db-secret-for-pg-dump" in seen  # the dump may need it
    r = cli("--repo", str(tmp_path / "repo"), "dump", "latest", "/stdin/env.txt")
    assert r.code == 0 and "STRONGROOM_JOB=default" in r.stdout and MARKER not in r.stdout
