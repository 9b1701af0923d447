"""ConfigError: every problem found in a config file, each naming its file, line and key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from strongroom.errors import UsageError


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where it is (file, line, dotted key) and what is wrong."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        head = ": ".join(part for part in (where, self.key) if part)
        return f"{head}: {self.message}" if head else self.message

    def as_json(self) -> dict[str, object]:
        return asdict(self)


class ConfigError(UsageError):
    """The configuration cannot be used; ``issues`` lists every problem found (exit 2)."""

    hint = "fix the file and run `strongroom config check`"

    def __init__(self, issues: Sequence[ConfigIssue], *, hint: str | None = None) -> None:
        super().__init__("\n".join(str(issue) for issue in issues), hint=hint)
        self.issues = tuple(issues)


class ConfigNotFound(ConfigError):
    """No configuration file where one was asked for or looked for."""

    hint = "pass --config FILE or set STRONGROOM_CONFIG"
