"""`strongroom config check` and `config show` through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.config.examples import FLEET, MINIMAL, write_config
from tests.conftest import cli


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    return write_config(tmp_path, FLEET)


def test_check_summarises_a_valid_config(fleet: Path) -> None:
    result = cli("--config", str(fleet), "config", "check")
    assert result.code == 0, result.stderr
    assert result.stdout == (
        f"{fleet}: ok: 4 client(s), 5 job(s), 2 group(s) (midnight, lab), "
        "2 repository(ies) (main, vault), 5 sink(s) (oncall, chat, mail, log, phones)\n"
    )


def test_check_as_json_lists_clients_and_their_jobs(fleet: Path) -> None:
    result = cli("config", "check", "--json", "--config", str(fleet))
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["ok"], doc["errors"], doc["file"], doc["jobs"]) == (True, [], str(fleet), 5)
    assert doc["clients"][0] == {
        "name": "dracula",
        "host": "dracula.corporate.drenpress.com",
        "transport": "ssh",
        "groups": ["midnight"],
        "jobs": ["default", "sql"],
    }
    assert [c["name"] for c in doc["clients"]] == ["dracula", "igor", "director", "vlad"]
    assert doc["repositories"] == ["main", "vault"]
    assert doc["groups"] == {"midnight": ["dracula", "igor"], "lab": ["igor", "vlad"]}


def test_check_finds_the_file_through_the_environment(
    fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRONGROOM_CONFIG", str(fleet))
    assert cli("config", "check").code == 0


def test_check_finds_the_file_in_the_current_directory(
    fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(fleet.parent)
    result = cli("config", "check")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("strongroom.toml: ok: ")


def test_a_missing_explicit_file_is_exit_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = cli("--config", str(missing), "config", "check")
    assert result.code == 2
    assert f"{missing}: no such file (given by --config)" in result.stderr
    result = cli("--config", str(missing), "config", "show", "dracula")
    assert result.code == 2
    assert f"{missing}: no such file (given by --config)" in result.stderr


def test_show_prints_the_merged_job_as_toml(fleet: Path) -> None:
    result = cli("--config", str(fleet), "config", "show", "dracula", "--job", "sql")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "# client dracula, job sql"
    for line in (
        'host = "dracula.corporate.drenpress.com"',
        'repository = "vault"',
        'sources = ["/var/backups/sql"]',
        'exclude = ["*.tmp", "/srv/cache"]',
        'retention = { daily = 30, within = "2d" }',
        "[[requires]]",
        'max_age = "12h"',
        "[[hooks]]",
        'timeout = "1h"',
    ):
        assert line in lines


def test_show_as_json_is_the_job_spec(fleet: Path) -> None:
    result = cli("--config", str(fleet), "--json", "config", "show", "igor")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["client"], doc["name"], doc["host"], doc["port"]) == (
        "igor",
        "default",
        "igor.lab.example.net",
        2222,
    )
    assert doc["retention"] == {
        "last": None,
        "hourly": None,
        "daily": 7,
        "weekly": 4,
        "monthly": 12,
        "yearly": None,
        "within": None,
        "within_hourly": None,
        "within_daily": None,
        "within_weekly": None,
        "within_monthly": None,
        "within_yearly": None,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nosuch",), "strongroom.toml: clients.nosuch: no such client (defined: dracula)"),
        (("dracula", "--job", "db"), ":4: clients.dracula.jobs.db: no such job (jobs: default)"),
    ],
)
def test_show_of_an_unknown_client_or_job_is_exit_2(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    path = write_config(tmp_path, MINIMAL)
    result = cli("--config", str(path), "config", "show", *args)
    assert result.code == 2
    assert message in result.stderr


def test_check_accepts_the_documented_example() -> None:
    example = Path(__file__).parents[2] / "docs" / "strongroom.example.toml"
    result = cli("--config", str(example), "config", "check")
    assert result.code == 0, result.stderr
