"""Notification sinks ([notify.NAME]): where events go, and which events each one wants."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator

from strongroom.config.base import Command, ConfigModel, ConfigPath, Host, Port, Text, Timeout
from strongroom.config.names import EventName

Facility = Literal[
    "user", "daemon", "auth", "authpriv", "syslog", "cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
]  # fmt: skip


class SinkBase(ConfigModel):
    """``events`` filters what a sink receives; left out, it receives every event.
    ``max_attempts`` bounds the retries of one event (with backoff from 30 s up to an
    hour, the default reaches about two days) before it is marked failed."""

    events: list[EventName] | None = None
    max_attempts: Annotated[int, Field(ge=1)] = 60

    def wants(self, event: str) -> bool:
        return self.events is None or event in self.events


class CommandSink(SinkBase):
    """Runs ``command`` with the event as JSON on stdin and STRONGROOM_* variables."""

    kind: Literal["command"]
    command: Command
    timeout: Timeout = 30


class WebhookSink(SinkBase):
    """POSTs the event as JSON. The URL and header values often carry tokens: secret.
    With ``secret_file``, each request carries an HMAC-SHA256 signature header."""

    kind: Literal["webhook"]
    url: SecretStr
    headers: dict[Text, SecretStr] = Field(default_factory=dict)
    secret_file: ConfigPath | None = None
    timeout: Timeout = 10

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: SecretStr) -> SecretStr:
        if not url.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("the URL must start with http:// or https://")
        return url


class EmailSink(SinkBase):
    """Mails the event through an SMTP server; the password is read from a file."""

    kind: Literal["email"]
    to: Annotated[list[Text], Field(min_length=1)]
    sender: Text = Field(alias="from")
    host: Host = "localhost"
    port: Port = 25
    starttls: bool = False
    username: Text | None = None
    password_file: ConfigPath | None = None
    timeout: Timeout = 30


class SyslogSink(SinkBase):
    """Logs the event to syslog: a socket path or host:port."""

    kind: Literal["syslog"]
    address: Text = "/dev/log"
    facility: Facility = "daemon"
    tag: Text = "strongroom"


class AppriseSink(SinkBase):
    """Sends the event to apprise URLs, which embed tokens: secret."""

    kind: Literal["apprise"]
    urls: Annotated[list[SecretStr], Field(min_length=1)]


Sink = Annotated[
    CommandSink | WebhookSink | EmailSink | SyslogSink | AppriseSink,
    Field(discriminator="kind"),
]
