"""Finding the config file, and reading it into a Config or one ConfigError with every problem."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import ValidationError

from strongroom.config.diagnostics import schema_problems
from strongroom.config.errors import ConfigError, ConfigIssue
from strongroom.config.fleet import Config
from strongroom.config.lines import KeyLines, index_lines, key_path
from strongroom.config.references import Problem, reference_problems
from strongroom.config.units import FROM_FILE

_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def load_config(path: Path | str) -> Config:
    """Read and validate the config file at ``path``; relative paths in it (such as a
    password_file) are taken from the file's directory.

    Raises ConfigError listing every problem, each with file, line and key.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            [ConfigIssue(str(path), None, "", f"cannot read: {e.strerror}")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError([ConfigIssue(str(path), line, "", "not UTF-8 text")]) from None
    return parse_config(text, file=str(path), base_dir=path.parent)


def parse_config(
    text: str, *, file: str = "strongroom.toml", base_dir: Path | None = None
) -> Config:
    """Validate the TOML ``text``, naming ``file`` in errors. See load_config."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([_syntax_issue(e, file, text)]) from None
    lines = index_lines(text)
    problems = reference_problems(data)
    try:
        context = {FROM_FILE: True, "file": file, "lines": lines, "base_dir": base_dir}
        config = Config.model_validate(data, context=context)
    except ValidationError as e:
        problems = schema_problems(e, data) + problems
    if problems:
        raise ConfigError(_issues(problems, file, lines))
    issues = _job_issues(config)
    if issues:
        raise ConfigError(issues)
    return config


def _job_issues(config: Config) -> list[ConfigIssue]:
    """Problems only the merged jobs show: no repository anywhere, no sources, no jobs."""
    issues: list[ConfigIssue] = []
    for client in config.clients:
        names = config.job_names(client)
        if not names:
            issues.append(
                config.issue(
                    ("clients", client),
                    "no jobs: give it sources = [...] or a [clients.NAME.jobs.JOB] table",
                )
            )
        for name in names:
            try:
                config.job(client, name)
            except ConfigError as e:
                issues.extend(e.issues)
    return _in_order(issues)


def _issues(problems: list[Problem], file: str, lines: KeyLines) -> list[ConfigIssue]:
    issues = [
        ConfigIssue(file, lines.line_of(path), key_path(path), message)
        for path, message in problems
    ]
    return _in_order(issues)


def _in_order(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """``issues`` by line, each once."""
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda issue: issue.line if issue.line is not None else 1 << 62)


def _syntax_issue(error: tomllib.TOMLDecodeError, file: str, text: str) -> ConfigIssue:
    message = str(error)
    match = _TOML_POSITION.search(message)
    if match is None:
        return ConfigIssue(file, None, "", f"invalid TOML: {message}")
    where = f" (column {match.group(2)})" if match.group(2) else " (at the end)"
    line = int(match.group(1)) if match.group(1) else text.count("\n") + 1
    return ConfigIssue(file, line, "", f"invalid TOML: {message[: match.start()]}{where}")
