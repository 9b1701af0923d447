"""Broken configs: every error names file, line and key, all are reported, and exit is 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strongroom.config import ConfigError, load_config
from tests.config.examples import MINIMAL, write_config
from tests.conftest import cli

# MINIMAL's lines: 1 [repositories.main], 2 url, 3 blank, 4 [clients.dracula],
# 5 repository, 6 sources; additions start at line 7.
CASES = [
    (
        "bad duration",
        MINIMAL + '[[clients.dracula.requires]]\nkind = "marker"\nname = "dump"\nmax_age = "12x"\n',
        10,
        "clients.dracula.requires[0].max_age",
        'invalid duration "12x" (use 30s, 15m, 12h, 7d)',
    ),
    (
        "duration without a unit",
        MINIMAL + '[[clients.dracula.requires]]\nkind = "marker"\nname = "dump"\nmax_age = 12\n',
        10,
        "clients.dracula.requires[0].max_age",
        "invalid duration 12 (write it with a unit: 30s, 15m, 12h, 7d)",
    ),
    (
        "missing key in the second table of an array",
        MINIMAL
        + '[[clients.dracula.requires]]\nkind = "command"\ncommand = ["true"]\n'
        + '[[clients.dracula.requires]]\nkind = "marker"\nname = "dump"\n',
        10,
        "clients.dracula.requires[1].max_age",
        "missing: this key is required",
    ),
    (
        "unknown prerequisite kind",
        MINIMAL + '[[clients.dracula.requires]]\nkind = "fresh"\n',
        8,
        "clients.dracula.requires[0].kind",
        'unknown kind "fresh" (kinds: "marker", "fresh-file", "command")',
    ),
    (
        "bad size",
        MINIMAL
        + '[[clients.dracula.requires]]\nkind = "fresh-file"\npath = "/d"\nmax_age = "1d"\n'
        + 'min_size = "10XB"\n',
        11,
        "clients.dracula.requires[0].min_size",
        'invalid size "10XB" (use 512B, 1KiB, 10MB, 2GiB)',
    ),
    (
        "misspelt key",
        MINIMAL + 'exlude = ["*.tmp"]\n',
        7,
        "clients.dracula.exlude",
        'unknown key (did you mean "exclude"?)',
    ),
    (
        "misspelt top-level key",
        'domian = ".example.com"\n' + MINIMAL,
        1,
        "domian",
        'unknown key (did you mean "domain"?)',
    ),
    (
        "misspelt key in an inline table",
        MINIMAL + "retention = { dayly = 7 }\n",
        7,
        "clients.dracula.retention.dayly",
        'unknown key (did you mean "daily"?)',
    ),
    (
        "unknown repository",
        MINIMAL.replace('repository = "main"', 'repository = "mian"'),
        5,
        "clients.dracula.repository",
        'unknown repository "mian" (defined: main)',
    ),
    (
        "unknown repository in a named job",
        MINIMAL + '[clients.dracula.jobs.db]\nrepository = "vault"\n',
        8,
        "clients.dracula.jobs.db.repository",
        'unknown repository "vault" (defined: main)',
    ),
    (
        "unknown notify sink",
        MINIMAL + 'notify = ["pager"]\n',
        7,
        "clients.dracula.notify[0]",
        'unknown notify sink "pager" (none defined)',
    ),
    (
        "unknown policy",
        '[defaults]\nretention = "gold"\n' + MINIMAL,
        2,
        "defaults.retention",
        'unknown policy "gold" (none defined)',
    ),
    (
        "unknown event",
        MINIMAL + '[notify.oncall]\nkind = "syslog"\nevents = ["run.failed", "run.fial"]\n',
        9,
        "notify.oncall.events[1]",
        'unknown event "run.fial" (events: run.started, ',
    ),
    (
        "sink without a kind",
        MINIMAL + '[notify.oncall]\ncommand = ["page"]\n',
        7,
        "notify.oncall.kind",
        "missing: this key is required",
    ),
    (
        "webhook that is not http",
        MINIMAL + '[notify.chat]\nkind = "webhook"\nurl = "ftp://example.net/x"\n',
        9,
        "notify.chat.url",
        "the URL must start with http:// or https://",
    ),
    (
        "both password sources",
        MINIMAL + '[repositories.vault]\nurl = "/v"\npassword_file = "/p"\n'
        'password_command = ["pass"]\n',
        7,
        "repositories.vault",
        "set password_file or password_command, not both",
    ),
    (
        "empty password command",
        MINIMAL + '[repositories.vault]\nurl = "/v"\npassword_command = []\n',
        9,
        "repositories.vault.password_command",
        "must not be empty",
    ),
    (
        "unsafe client name",
        MINIMAL + '[clients."bad name"]\nsources = ["/etc"]\n',
        7,
        'clients."bad name"',
        'invalid name "bad name" (use up to 64 letters, digits, ".", "_" or "-", '
        "starting with a letter or digit)",
    ),
    (
        "unsafe group name",
        MINIMAL + 'groups = ["night shift"]\n',
        7,
        "clients.dracula.groups[0]",
        'invalid name "night shift"',
    ),
    (
        "unknown transport",
        MINIMAL + 'transport = "sssh"\n',
        7,
        "clients.dracula.transport",
        'expected "ssh" or "local", not "sssh"',
    ),
    (
        "port out of range",
        MINIMAL + "port = 70000\n",
        7,
        "clients.dracula.port",
        "must be at most 65535, not 70000",
    ),
    (
        "host that would be an ssh option",
        MINIMAL + 'host = "-oProxyCommand=x"\n',
        7,
        "clients.dracula.host",
        'invalid host "-oProxyCommand=x" (a DNS name or address)',
    ),
    (
        "relative source",
        MINIMAL.replace('["/etc"]', '["/etc", "srv"]'),
        6,
        "clients.dracula.sources[1]",
        '"srv" is not an absolute path (start it with /)',
    ),
    (
        "string instead of a list",
        MINIMAL.replace('["/etc"]', '"/etc"'),
        6,
        "clients.dracula.sources",
        "expected an array, not a string",
    ),
    (
        "number instead of a string",
        MINIMAL.replace('url = "/srv/main"', "url = 5"),
        2,
        "repositories.main.url",
        "expected a string, not an integer",
    ),
    (
        "no repository anywhere",
        MINIMAL.replace('repository = "main"\n', ""),
        4,
        "clients.dracula.repository",
        "no repository: set one here or in [defaults]",
    ),
    (
        "client with nothing to back up",
        MINIMAL + "[clients.igor]\nport = 2222\n",
        7,
        "clients.igor",
        "no jobs: give it sources = [...] or a [clients.NAME.jobs.JOB] table",
    ),
    (
        "named job with no sources",
        MINIMAL.replace('sources = ["/etc"]', "") + "[clients.dracula.jobs.db]\nsources = []\n",
        8,
        "clients.dracula.jobs.db.sources",
        "no sources or streams to back up",
    ),
    (
        "named job key that belongs to the client",
        MINIMAL + '[clients.dracula.jobs.db]\nhost = "db.example.net"\n',
        8,
        "clients.dracula.jobs.db.host",
        "unknown key",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_broken_config_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    path = write_config(tmp_path, text)
    result = cli("--config", str(path), "config", "check")
    assert result.code == 2
    assert f"{path}:{line}: {key}: {message}" in result.stderr, result.stderr
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.exit_code == 2
    assert len(caught.value.issues) == 1, caught.value.issues


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[clients.dracula\n", 1, "invalid TOML: "),
        (MINIMAL + 'sources = ["/srv"]\n', 7, "invalid TOML: "),
        (MINIMAL + "port = \n", 7, "invalid TOML: Invalid value (column 8)"),
    ],
)
def test_a_toml_syntax_error_names_its_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write_config(tmp_path, text)
    result = cli("--config", str(path), "config", "check")
    assert result.code == 2
    assert result.stderr.startswith(f"{path}:{line}: {message}"), result.stderr


def test_text_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "strongroom.toml"
    path.write_bytes(MINIMAL.encode() + b'exclude = ["\xff"]\n')
    result = cli("--config", str(path), "config", "check")
    assert result.code == 2
    assert f"{path}:7: not UTF-8 text" in result.stderr


def test_every_error_is_reported_together_in_file_order(tmp_path: Path) -> None:
    text = (
        "[defaults]\n"  # 1
        'notify = ["pager"]\n'  # 2
        "[repositories.main]\n"  # 3
        "url = 5\n"  # 4
        "[clients.dracula]\n"  # 5
        'repository = "main"\n'  # 6
        'sources = ["etc"]\n'  # 7
        "prot = 22\n"  # 8
    )
    path = write_config(tmp_path, text)
    result = cli("--config", str(path), "config", "check")
    assert result.code == 2
    assert result.stderr.splitlines() == [
        f'{path}:2: defaults.notify[0]: unknown notify sink "pager" (none defined)',
        f"{path}:4: repositories.main.url: expected a string, not an integer",
        f'{path}:7: clients.dracula.sources[0]: "etc" is not an absolute path (start it with /)',
        f'{path}:8: clients.dracula.prot: unknown key (did you mean "port"?)',
        "strongroom: 4 configuration error(s)",
    ]


def test_errors_as_json(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + "port = 0\n")
    result = cli("--config", str(path), "config", "check", "--json")
    assert result.code == 2
    assert json.loads(result.stdout) == {
        "ok": False,
        "file": str(path),
        "errors": [
            {
                "file": str(path),
                "line": 7,
                "key": "clients.dracula.port",
                "message": "must be at least 1, not 0",
            }
        ],
        "clients": [],
    }


def test_a_config_error_stops_other_commands_with_exit_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, MINIMAL + "port = 0\n")
    result = cli("--config", str(path), "config", "show", "dracula")
    assert result.code == 2
    assert f"{path}:7: clients.dracula.port: must be at least 1, not 0" in result.stderr


def test_an_error_never_echoes_a_secret_value(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[notify.chat]\nkind = "webhook"\nurl = "ftp://S3CRET@example.net"\n'
        "headers = { Authorization = 5 }\n"
        '[notify.phones]\nkind = "apprise"\nurls = ["S3CRET", 7]\n'
    )
    result = cli("--config", str(write_config(tmp_path, text)), "config", "check")
    assert result.code == 2
    assert result.stderr.count("\n") == 4, result.stderr
    assert "S3CRET" not in result.stderr
