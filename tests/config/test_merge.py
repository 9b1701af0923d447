"""Layers merge defaults -> client -> named job: the nearest setting wins, lists replace."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from strongroom.config import (
    BUILT_IN,
    DEFAULT_JOB,
    ConfigError,
    Retention,
    merge_layers,
    parse_config,
)


@pytest.mark.parametrize(
    ("layers", "merged"),
    [
        ([], {}),
        ([{"a": 1}], {"a": 1}),
        ([{"a": 1}, {"a": 2}], {"a": 2}),
        ([{"a": 1}, {"a": None}], {"a": 1}),
        ([{"a": 1}, {}], {"a": 1}),
        ([{"a": 1}, {"b": 2}], {"a": 1, "b": 2}),
        ([{"x": ["*.tmp"]}, {"x": ["/cache"]}], {"x": ["/cache"]}),
        ([{"x": ["*.tmp"]}, {"x": []}], {"x": []}),
        ([{"r": {"daily": 7, "weekly": 4}}, {"r": {"daily": 30}}], {"r": {"daily": 30}}),
        ([{"a": 1}, {"a": None}, {"a": 3}], {"a": 3}),
        ([{"a": None}], {}),
    ],
)
def test_later_layers_win_key_by_key(
    layers: list[Mapping[str, object]], merged: dict[str, object]
) -> None:
    assert merge_layers(*layers) == merged


def test_merging_leaves_its_layers_alone() -> None:
    first, second = {"a": [1]}, {"b": 2}
    merge_layers(first, second)
    assert first == {"a": [1]} and second == {"b": 2}


def test_built_in_values_fill_what_no_layer_sets() -> None:
    merged = merge_layers(BUILT_IN, {"port": 2222})
    assert merged["port"] == 2222
    assert merged["ssh_command"] == ["ssh"]
    assert merged["agent_command"] == ["strongroom", "agent"]


REPOSITORIES = """\
[repositories.main]
url = "/srv/main"
[repositories.vault]
url = "/srv/vault"
[policies.gold]
daily = 30
"""


def job_attribute(
    defaults: str, client: str, job: str | None, attribute: str, domain: str = ""
) -> object:
    text = f'domain = "{domain}"\n{REPOSITORIES}\n[defaults]\nrepository = "main"\n{defaults}\n'
    text += f'[clients.dracula]\nsources = ["/etc"]\n{client}\n'
    if job is not None:
        text += f"[clients.dracula.jobs.j]\n{job}\n"
    config = parse_config(text)
    return getattr(config.job("dracula", None if job is None else "j"), attribute)


@pytest.mark.parametrize(
    ("defaults", "client", "job", "attribute", "expected"),
    [
        ('exclude = ["*.tmp"]', "", None, "exclude", ("*.tmp",)),
        ('exclude = ["*.tmp"]', 'exclude = ["/c"]', None, "exclude", ("/c",)),
        ('exclude = ["*.tmp"]', 'exclude = ["/c"]', 'exclude = ["/j"]', "exclude", ("/j",)),
        ('exclude = ["*.tmp"]', 'exclude = ["/c"]', "exclude = []", "exclude", ()),
        ('exclude = ["*.tmp"]', "", "", "exclude", ("*.tmp",)),
        ("", "", 'sources = ["/srv"]', "sources", ("/srv",)),
        ("", "", "", "sources", ("/etc",)),
        ("", "", None, "repository", "main"),
        ("", 'repository = "vault"', None, "repository", "vault"),
        ("", 'repository = "vault"', 'repository = "main"', "repository", "main"),
        ("", "", None, "port", 22),
        ("port = 2200", "", None, "port", 2200),
        ("port = 2200", "port = 2201", None, "port", 2201),
        ("", "", None, "ssh_command", ("ssh",)),
        ("", "", None, "agent_command", ("strongroom", "agent")),
        (
            'agent_command = ["sudo", "sr", "agent"]',
            "",
            "",
            "agent_command",
            ("sudo", "sr", "agent"),
        ),
        ("", "", None, "transport", "ssh"),
        ("", 'transport = "local"', "", "transport", "local"),
        ("", "", None, "notify", ()),
        ("", "", None, "schedule", None),
        ('schedule = "02:00"', "", 'schedule = "04:00"', "schedule", "04:00"),
        ('timeout = "6h"', "", "", "timeout", 21600),
        ("", "", None, "host", "dracula"),
        ("", 'host = "10.0.0.7"', "", "host", "10.0.0.7"),
        ("", 'groups = ["a", "b"]', "", "groups", ("a", "b")),
        ("", "", None, "name", DEFAULT_JOB),
        ("", "", "", "name", "j"),
    ],
)
def test_the_effective_job_takes_the_nearest_setting(
    defaults: str, client: str, job: str | None, attribute: str, expected: object
) -> None:
    assert job_attribute(defaults, client, job, attribute) == expected


@pytest.mark.parametrize(
    ("defaults", "client", "job", "expected"),
    [
        ("", "", None, {}),
        ("retention = { daily = 7, weekly = 4 }", "", None, {"daily": 7, "weekly": 4}),
        ("retention = { daily = 7, weekly = 4 }", "retention = { daily = 1 }", None, {"daily": 1}),
        ("retention = { daily = 7 }", "", 'retention = "gold"', {"daily": 30}),
        ('retention = "gold"', "", "", {"daily": 30}),
        ('retention = "gold"', "", 'retention = { within = "2d" }', {"within": 172800}),
    ],
)
def test_a_retention_table_or_policy_replaces_the_inherited_one(
    defaults: str, client: str, job: str | None, expected: dict[str, int]
) -> None:
    retention = job_attribute(defaults, client, job, "retention")
    assert isinstance(retention, Retention)
    assert retention.model_dump(exclude_none=True) == expected


@pytest.mark.parametrize(
    ("domain", "host"),
    [
        ("", "dracula"),
        (".corporate.drenpress.com", "dracula.corporate.drenpress.com"),
        ("corporate.drenpress.com", "dracula.corporate.drenpress.com"),
    ],
)
def test_a_short_name_joins_the_domain(domain: str, host: str) -> None:
    assert job_attribute("", "", None, "host", domain=domain) == host


def test_a_named_job_inherits_the_client_keys_it_does_not_set() -> None:
    config = parse_config(
        REPOSITORIES
        + '[clients.db]\nrepository = "vault"\nport = 2222\nexclude = ["*.tmp"]\n'
        + '[clients.db.jobs.dumps]\nsources = ["/dumps"]\n'
    )
    job = config.job("db", "dumps")
    assert (job.repository, job.port, job.exclude, job.sources) == (
        "vault",
        2222,
        ("*.tmp",),
        ("/dumps",),
    )
    assert config.job_names("db") == ["dumps"]
    with pytest.raises(ConfigError, match=r"has no default job.*--job: dumps"):
        config.job("db")


def test_an_explicit_default_job_table_adds_to_the_unnamed_settings() -> None:
    config = parse_config(
        REPOSITORIES
        + '[clients.db]\nrepository = "main"\nsources = ["/etc"]\n'
        + '[clients.db.jobs.default]\nrepository = "vault"\n'
        + '[clients.db.jobs.other]\nsources = ["/srv"]\n'
    )
    assert config.job_names("db") == ["default", "other"]
    assert config.job("db").repository == "vault"
    assert config.job("db").sources == ("/etc",)
