"""After a job's snapshot: off-site copies (with their own retention), then retention."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.conftest import cli


def _fleet(tmp_path: Path, vault_init: bool = True) -> Path:
    assert cli("--repo", str(tmp_path / "repo"), "init").code == 0
    if vault_init:
        assert cli("--repo", str(tmp_path / "vault"), "init").code == 0
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{tmp_path}/repo"\n'
        f'[repositories.vault]\nurl = "{tmp_path}/vault"\n'
        '[defaults]\nrepository = "main"\nretention = { last = 2 }\n'
        f'[clients.alpha]\ntransport = "local"\nsources = ["{data}"]\n'
        'copies = [{ repository = "vault", retention = { last = 3 } }]\n'
        f'[clients.beta]\ntransport = "local"\nsources = ["{data}"]\n'
    )
    return data


def _run(client: str) -> tuple[int, dict[str, Any]]:
    r = cli("run", client, "--json")
    return r.code, json.loads(r.stdout.splitlines()[-1])


def _ids(repo: Path, client: str) -> list[str]:
    r = cli("--repo", str(repo), "snapshots", "--client", client, "--json")
    assert r.code == 0, r.stderr
    return [s["id"] for s in json.loads(r.stdout)]


def test_copies_reach_the_vault_and_each_repository_keeps_its_own_retention(
    tmp_path: Path,
) -> None:
    data = _fleet(tmp_path)
    summaries = []
    for i in range(5):
        (data / "f").write_text(f"version {i}\n" * 100)
        code, summary = _run("alpha")
        assert code == 0, summary
        summaries.append(summary)
    home, vault = _ids(tmp_path / "repo", "alpha"), _ids(tmp_path / "vault", "alpha")
    assert len(home) == 2 and len(vault) == 3
    assert summaries[-1]["snapshot_id"] in home
    assert summaries[-1]["copies"][0]["snapshot_id"] in vault
    # The newest vault copy restores the newest version, byte for byte.
    target = tmp_path / "restored"
    r = cli("--repo", str(tmp_path / "vault"), "restore", vault[-1], "--target", str(target))
    assert r.code == 0, r.stderr
    assert (target / str(data).lstrip("/") / "f").read_text() == "version 4\n" * 100
    assert cli("--repo", str(tmp_path / "vault"), "check", "--read-data").code == 0
    # The catalog knows exactly what is left, in both repositories.
    r = cli("snapshots", "--client", "alpha", "--json")
    listed = {s["id"] for s in json.loads(r.stdout)}
    assert listed == set(home) | set(vault)
    # beta has no copies: only the default retention applies to it.
    for _ in range(3):
        assert _run("beta")[0] == 0
    assert len(_ids(tmp_path / "repo", "beta")) == 2
    assert _ids(tmp_path / "vault", "beta") == []


def test_a_failed_copy_fails_the_run_and_keeps_the_snapshot(tmp_path: Path) -> None:
    data = _fleet(tmp_path, vault_init=False)
    (data / "f").write_text("x")
    code, summary = _run("alpha")
    assert code == 10, summary
    assert summary["snapshot_id"] in _ids(tmp_path / "repo", "alpha")
    r = cli("events", "list", "--json")
    names = [e["event"] for e in json.loads(r.stdout)]
    assert names.count("run.failed") == 1 and "run.succeeded" not in names


def test_the_text_output_names_the_copies_retention_and_why_a_run_failed(
    tmp_path: Path,
) -> None:
    data = _fleet(tmp_path)
    for i in range(3):
        (data / "f").write_text(f"version {i}\n")
        r = cli("run", "alpha")
        assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    vault = _ids(tmp_path / "vault", "alpha")
    assert lines[0].startswith("alpha/default: succeeded, exit 0, snapshot ")
    assert re.fullmatch(
        f"alpha/default: copied to vault as {vault[-1][:8]}, [1-9][0-9]* bytes uploaded; "
        r"retention there removed 0 snapshot\(s\)",
        lines[1],
    ), lines[1]
    assert lines[2] == "alpha/default: retention removed 1 snapshot(s)"

    (tmp_path / "vault" / "config").rename(tmp_path / "vault-config")
    (data / "f").write_text("version 3\n")
    r = cli("run", "alpha")
    assert r.code == 10
    (line,) = r.stdout.splitlines()
    assert line.startswith("alpha/default: failed, exit 10, snapshot ")
    assert f"{tmp_path}/vault: no strongroom repository there" in line


def test_a_copy_that_failed_is_caught_up_by_the_next_run(tmp_path: Path) -> None:
    data = _fleet(tmp_path)
    (data / "f").write_text("version 0\n")
    assert _run("alpha")[0] == 0
    vault = tmp_path / "vault"
    vault.rename(tmp_path / "vault-away")  # the off-site repository is unreachable
    (data / "f").write_text("version 1\n")
    code, missed = _run("alpha")
    assert code == 10, missed
    (tmp_path / "vault-away").rename(vault)
    (data / "f").write_text("version 2\n")
    code, summary = _run("alpha")
    assert code == 0, summary
    [copy] = summary["copies"]
    assert len(copy["caught_up"]) == 1
    # The vault holds all three versions, the missed one under its own copy.
    copies = {}
    for sid in _ids(vault, "alpha"):
        target = tmp_path / f"r-{sid[:8]}"
        assert cli("--repo", str(vault), "restore", sid, "--target", str(target)).code == 0
        copies[sid] = (target / str(data).lstrip("/") / "f").read_text()
    assert sorted(copies.values()) == ["version 0\n", "version 1\n", "version 2\n"]
    assert copies[copy["caught_up"][0]] == "version 1\n"
    assert copies[copy["snapshot_id"]] == "version 2\n"
    # The catalog knows the caught-up copy; a further run has nothing to catch up.
    listed = {s["id"] for s in json.loads(cli("snapshots", "--client", "alpha", "--json").stdout)}
    assert set(copies) <= listed
    assert _run("alpha")[1]["copies"][0]["caught_up"] == []


def test_a_new_vault_gets_new_snapshots_only(tmp_path: Path) -> None:
    """Back-filling history is `strongroom copy`'s job, not every night's run."""
    data = _fleet(tmp_path, vault_init=False)
    (data / "f").write_text("old\n")
    assert _run("alpha")[0] == 10  # no vault yet: the copy fails
    assert cli("--repo", str(tmp_path / "vault"), "init").code == 0
    (data / "f").write_text("new\n")
    code, summary = _run("alpha")
    assert code == 0, summary
    assert summary["copies"][0]["caught_up"] == []
    assert len(_ids(tmp_path / "vault", "alpha")) == 1
