"""Where the config file is: found without importing the validation machinery."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from strongroom.config.errors import ConfigIssue, ConfigNotFound

SYSTEM_CONFIG = Path("/etc/strongroom/strongroom.toml")
LOCAL_CONFIG = Path("strongroom.toml")


def find_config(
    explicit: str | None,
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    system: Path = SYSTEM_CONFIG,
) -> Path:
    """The config file to use: ``explicit`` (--config), else STRONGROOM_CONFIG, else
    ./strongroom.toml, else /etc/strongroom/strongroom.toml.

    Raises ConfigNotFound when a file asked for does not exist, or none is found.
    """
    for given, origin in (
        (explicit, "--config"),
        (env.get("STRONGROOM_CONFIG"), "STRONGROOM_CONFIG"),
    ):
        if given:
            if not Path(given).is_file():
                raise ConfigNotFound(
                    [ConfigIssue(given, None, "", f"no such file (given by {origin})")]
                )
            return Path(given)
    local = LOCAL_CONFIG if cwd is None else cwd / LOCAL_CONFIG
    for candidate in (local, system):
        if candidate.is_file():
            return candidate
    message = (
        f"no configuration file: looked for --config, STRONGROOM_CONFIG, ./{LOCAL_CONFIG} "
        f"and {system}"
    )
    raise ConfigNotFound([ConfigIssue("", None, "", message)])
