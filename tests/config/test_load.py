"""A full fleet config loads and resolves; the file is found in SPEC's order."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.config import (
    CommandRequirement,
    CommandSink,
    Config,
    ConfigError,
    ConfigNotFound,
    EmailSink,
    FreshFileRequirement,
    Hook,
    MarkerRequirement,
    SyslogSink,
    WebhookSink,
    find_config,
    load_config,
)
from tests.config.examples import FLEET, MINIMAL, write_config

EXAMPLE = Path(__file__).parents[2] / "docs" / "strongroom.example.toml"


@pytest.fixture
def fleet(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, FLEET))


def test_the_fleet_has_its_clients_jobs_and_groups(fleet: Config) -> None:
    assert list(fleet.clients) == ["dracula", "igor", "director", "vlad"]
    assert fleet.job_names("dracula") == ["default", "sql"]
    assert fleet.job_names("vlad") == ["www"]
    assert [(j.client, j.name) for j in fleet.jobs()] == [
        ("dracula", "default"),
        ("dracula", "sql"),
        ("igor", "default"),
        ("director", "default"),
        ("vlad", "www"),
    ]
    assert fleet.groups() == {"midnight": ["dracula", "igor"], "lab": ["igor", "vlad"]}
    assert fleet.clients_in_group("lab") == ["igor", "vlad"]


def test_the_default_job_merges_defaults_and_the_client(fleet: Config) -> None:
    job = fleet.job("dracula")
    assert job.name == "default"
    assert job.host == "dracula.corporate.drenpress.com"
    assert (job.transport, job.port) == ("ssh", 22)
    assert job.ssh_command == ("ssh", "-l", "root")
    assert job.agent_command == ("strongroom", "agent")
    assert job.repository == "main"
    assert job.sources == ("/etc", "/srv", "/var/backups/sql")
    assert job.exclude == ("*.tmp", "/srv/cache")
    assert job.notify == ("oncall",)
    assert (job.retention.daily, job.retention.weekly, job.retention.monthly) == (7, 4, 12)
    assert job.requires == (
        MarkerRequirement(kind="marker", name="sql-dump", max_age=12 * 3600),
        FreshFileRequirement(
            kind="fresh-file", path="/var/backups/sql/latest.dump", max_age=20 * 3600, min_size=1024
        ),
    )


def test_a_named_job_overrides_what_it_sets(fleet: Config) -> None:
    job = fleet.job("dracula", "sql")
    assert job.sources == ("/var/backups/sql",)
    assert job.repository == "vault"
    assert (job.retention.within, job.retention.daily, job.retention.weekly) == (172800, 30, None)
    assert job.notify == ("oncall", "chat")
    assert job.schedule == "03:30"
    assert job.hooks == (
        Hook(when="before", command=["/usr/local/bin/dump-all"], on="client", timeout=3600),
    )
    assert job.exclude == ("*.tmp", "/srv/cache")  # the client's, inherited
    assert job.requires == fleet.job("dracula").requires


def test_clients_get_hosts_ports_and_transports(fleet: Config) -> None:
    igor = fleet.job("igor")
    assert (igor.host, igor.port, igor.exclude) == ("igor.lab.example.net", 2222, ("*.swp",))
    director = fleet.job("director")
    assert (director.transport, director.exclude) == ("local", ())
    www = fleet.job("vlad", "www")
    assert www.host == "vlad.corporate.drenpress.com"
    assert www.requires == (
        CommandRequirement(kind="command", command=["/usr/bin/true"], on="client", timeout=30),
    )


def test_sinks_keep_their_kind_and_filter(fleet: Config) -> None:
    oncall, chat, mail, log = (fleet.sink(n) for n in ("oncall", "chat", "mail", "log"))
    assert isinstance(oncall, CommandSink) and oncall.timeout == 30
    assert oncall.wants("run.failed") and not oncall.wants("run.succeeded")
    assert isinstance(chat, WebhookSink) and chat.wants("run.succeeded")
    assert chat.url.get_secret_value() == "https://chat.example.net/hooks/T0KEN-WEBHOOK"
    assert isinstance(mail, EmailSink) and (mail.sender, mail.port) == (
        "strongroom@example.net",
        25,
    )
    assert isinstance(log, SyslogSink) and (log.address, log.facility) == ("/dev/log", "daemon")


def test_repositories_and_catalog(fleet: Config) -> None:
    assert fleet.repository("main").password_file == "/etc/strongroom/main.pass"
    assert fleet.repository("vault").password_command == ["pass", "show", "vault"]
    assert fleet.catalog is not None
    assert fleet.catalog.url.get_secret_value() == "sqlite:///var/lib/strongroom/catalog.db"


def test_the_documented_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert len(config.jobs()) >= 5
    assert config.job("db01", "dumps").retention.yearly == 5


@pytest.mark.parametrize(
    ("call", "key", "message"),
    [
        (lambda c: c.client("nosuch"), "clients.nosuch", "no such client (defined: dracula, "),
        (lambda c: c.job("nosuch"), "clients.nosuch", "no such client"),
        (lambda c: c.job("dracula", "nosuch"), "clients.dracula.jobs.nosuch", "no such job"),
        (lambda c: c.job("vlad"), "clients.vlad", "has no default job"),
        (lambda c: c.repository("nosuch"), "repositories.nosuch", "no such repository"),
        (lambda c: c.sink("nosuch"), "notify.nosuch", "no such sink"),
        (lambda c: c.clients_in_group("nosuch"), "", 'no client is in group "nosuch"'),
    ],
)
def test_a_lookup_of_an_unknown_name_names_the_key(
    fleet: Config, call: object, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        call(fleet)  # type: ignore[operator]
    (issue,) = caught.value.issues
    assert (issue.key, issue.file) == (key, fleet.file)
    assert issue.message.startswith(message)
    assert caught.value.exit_code == 2


# --- where the file is found ------------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    names = ("explicit", "env", "cwd", "system")
    for name in names:
        (tmp_path / name).mkdir()
    return {name: write_config(tmp_path / name, MINIMAL) for name in names}


@pytest.mark.parametrize(
    ("present", "chosen"),
    [
        ({"explicit", "env", "cwd", "system"}, "explicit"),
        ({"env", "cwd", "system"}, "env"),
        ({"cwd", "system"}, "cwd"),
        ({"system"}, "system"),
    ],
)
def test_the_file_is_found_in_spec_order(
    places: dict[str, Path], present: set[str], chosen: str
) -> None:
    explicit = str(places["explicit"]) if "explicit" in present else None
    env = {"STRONGROOM_CONFIG": str(places["env"])} if "env" in present else {}
    cwd = places["cwd"].parent if "cwd" in present else places["cwd"].parent / "empty"
    found = find_config(explicit, env, cwd=cwd, system=places["system"])
    assert found == places[chosen]


def test_the_current_directory_means_the_process_one(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(places["cwd"].parent)
    assert find_config(None, {}, system=places["system"]) == Path("strongroom.toml")


@pytest.mark.parametrize(
    ("explicit", "env", "origin"),
    [
        ("missing.toml", {}, "--config"),
        (None, {"STRONGROOM_CONFIG": "missing.toml"}, "STRONGROOM_CONFIG"),
    ],
)
def test_a_file_asked_for_must_exist(
    places: dict[str, Path], explicit: str | None, env: dict[str, str], origin: str
) -> None:
    with pytest.raises(ConfigNotFound) as caught:
        find_config(explicit, env, cwd=places["cwd"].parent, system=places["system"])
    assert str(caught.value) == f"missing.toml: no such file (given by {origin})"
    assert caught.value.exit_code == 2


def test_no_file_anywhere_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigNotFound) as caught:
        find_config(None, {}, cwd=tmp_path, system=tmp_path / "etc.toml")
    assert "./strongroom.toml" in str(caught.value)
    assert str(tmp_path / "etc.toml") in str(caught.value)


def test_a_lookup_points_at_the_client_it_knows(fleet: Config) -> None:
    with pytest.raises(ConfigError) as caught:
        fleet.job("dracula", "nosuch")
    assert caught.value.issues[0].line == 24  # [clients.dracula]
    with pytest.raises(ConfigError) as caught:
        fleet.client("nosuch")
    assert caught.value.issues[0].line is None
