"""The base of every config model, and the small value types the models share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from strongroom.config.names import quote
from strongroom.config.units import Duration


class ConfigModel(BaseModel):
    """Strict types, misspelt keys rejected, immutable once loaded."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def check_absolute(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{quote(path)} is not an absolute path (start it with /)")
    return path


def check_host(host: str) -> str:
    # A leading "-" would reach ssh as an option.
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        raise ValueError(f"invalid host {quote(host)} (a DNS name or address)")
    return host


def relative_to_config(path: str, info: ValidationInfo) -> str:
    """A relative path in a config file is taken from the file's directory."""
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    return path if base is None else str(Path(base, path))


Text = Annotated[str, Field(min_length=1)]
Command = Annotated[list[Text], Field(min_length=1)]
ConfigPath = Annotated[Text, AfterValidator(relative_to_config)]
AbsolutePath = Annotated[str, AfterValidator(check_absolute)]
Host = Annotated[str, AfterValidator(check_host)]
Port = Annotated[int, Field(ge=1, le=65535)]
Count = Annotated[int, Field(ge=0)]
Timeout = Annotated[Duration, Field(gt=0)]
