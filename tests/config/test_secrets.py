"""Repository passwords come from a file, a command or the environment, and never leak."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from strongroom.config import Config, RepositorySpec, load_config, parse_config
from strongroom.errors import UsageError, WrongPasswordError
from tests.config.examples import FLEET, write_config
from tests.conftest import cli

PASSWORD_MARKER = "pw-MARKER-7d1e"
TOKENS = ("T0KEN-WEBHOOK", "T0KEN-HEADER", "T0KEN-APPRISE", "db-S3CRET")


def repository(text: str, base_dir: Path | None = None) -> RepositorySpec:
    config = parse_config(
        f'[repositories.main]\nurl = "/srv/main"\n{text}\n'
        '[clients.c]\nrepository = "main"\nsources = ["/etc"]\n',
        base_dir=base_dir,
    )
    return config.repository("main")


def python_command(code: str) -> str:
    return json.dumps([sys.executable, "-c", code])


def test_a_password_file_loses_one_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pass").write_bytes(b"secret\n\n")
    spec = repository(f'password_file = "{tmp_path / "pass"}"')
    assert spec.password({}) == b"secret\n"


def test_a_relative_password_file_is_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "main.pass").write_text("secret\r\n")
    assert repository('password_file = "main.pass"', base_dir=tmp_path).password({}) == b"secret"


def test_an_unreadable_password_file_names_the_file(tmp_path: Path) -> None:
    spec = repository(f'password_file = "{tmp_path / "missing"}"')
    with pytest.raises(UsageError, match=r"cannot read password file .*missing: No such file"):
        spec.password({})


def test_a_password_command_prints_the_password(tmp_path: Path) -> None:
    code = "import os; print(os.environ['WORD'])"
    spec = repository(f"password_command = {python_command(code)}")
    assert spec.password({"WORD": "from-command"}) == b"from-command"


def test_a_failing_password_command_hides_its_output() -> None:
    code = f"import sys; print('{PASSWORD_MARKER}'); sys.stderr.write('{PASSWORD_MARKER}'); exit(3)"
    spec = repository(f"password_command = {python_command(code)}")
    with pytest.raises(WrongPasswordError) as caught:
        spec.password({})
    name = Path(sys.executable).name
    assert str(caught.value) == f"password command {name} failed with exit code 3"
    assert caught.value.exit_code == 12


def test_a_missing_password_command_is_a_wrong_password() -> None:
    spec = repository('password_command = ["/nonexistent/pass-helper"]')
    with pytest.raises(WrongPasswordError, match="pass-helper could not run"):
        spec.password({})


@pytest.mark.parametrize(
    ("env", "password"),
    [
        ({"STRONGROOM_PASSWORD": "from-env"}, b"from-env"),
        ({"STRONGROOM_PASSWORD_FILE": "{file}"}, b"from-file"),
        ({"STRONGROOM_PASSWORD_COMMAND": "echo from-command"}, b"from-command"),
    ],
)
def test_without_either_the_environment_gives_the_password(
    tmp_path: Path, env: dict[str, str], password: bytes
) -> None:
    (tmp_path / "pass").write_text("from-file\n")
    env = {name: value.format(file=tmp_path / "pass") for name, value in env.items()}
    assert repository("").password(env) == password


def test_no_password_anywhere_is_a_wrong_password() -> None:
    with pytest.raises(WrongPasswordError, match="no password"):
        repository("").password({})


def every_model(config: Config) -> list[BaseModel]:
    models: list[BaseModel] = [config, *config.repositories.values(), *config.notify.values()]
    models += [*config.clients.values(), *config.jobs()]
    return models + ([config.catalog] if config.catalog else [])


def test_secrets_never_appear_in_repr_str_or_json(tmp_path: Path) -> None:
    (tmp_path / "main.pass").write_text(PASSWORD_MARKER + "\n")
    text = FLEET.replace('"/etc/strongroom/main.pass"', '"main.pass"').replace(
        "sqlite:///var/lib/strongroom/catalog.db", "postgresql://sr:db-S3CRET@127.0.0.1/sr"
    )
    path = write_config(tmp_path, text)
    config = load_config(path)
    assert config.repository("main").password({}) == PASSWORD_MARKER.encode()
    for model in every_model(config):
        for shown in (repr(model), str(model), model.model_dump_json(), str(model.model_dump())):
            for marker in (PASSWORD_MARKER, *TOKENS):
                assert marker not in shown, (type(model).__name__, marker)
    for args in (("config", "check", "--json"), ("config", "show", "dracula", "--job", "sql")):
        result = cli("--config", str(path), *args)
        assert result.code == 0, result.stderr
        for marker in (PASSWORD_MARKER, *TOKENS):
            assert marker not in result.stdout + result.stderr
