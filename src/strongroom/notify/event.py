"""An event as every sink sees it: one JSON object (SPEC.md, "Events")."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# A fixed namespace, so that an event derived from the same facts (a client found stale
# on a given day, say) gets the same id on every director: storing it again is a no-op.
_NAMESPACE = uuid.UUID("8f0b8c2e-5d5e-4b8e-9a57-3c3f6d2b1a10")

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@]*):([^/\s@]+)@")
_SECRET_PARAMS = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|access_token|api_key|apikey|key|signature"
    r"|x-amz-signature|x-amz-credential)=([^&\s\"']+)"
)
_AUTH_HEADER = re.compile(r"(?i)\b(authorization|x-api-key)\s*[:=]\s*\S+(\s+\S+)?")


def redact(text: str) -> str:
    """``text`` with the credentials of URLs, secret-looking query parameters and
    authorization headers replaced by ``***``. Event messages quote errors, and errors
    quote commands and URLs: nothing secret may ride along to a pager (R18)."""
    text = _URL_CREDENTIALS.sub(r"\1\2:***@", text)
    text = _SECRET_PARAMS.sub(r"\1=***", text)
    return _AUTH_HEADER.sub(r"\1: ***", text)


def derived_id(*facts: str) -> str:
    """A stable event id for an event identified by ``facts``."""
    return str(uuid.uuid5(_NAMESPACE, "\x00".join(facts)))


@dataclass(frozen=True)
class Event:
    """``id`` is the idempotency key: a sink may see an event twice, never with two ids."""

    name: str
    time: datetime
    client: str | None = None
    job: str | None = None
    run_id: str | None = None
    exit_code: int | None = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def payload(self) -> dict[str, Any]:
        """The JSON object of SPEC.md, its text redacted."""
        return {
            "event": self.name,
            "id": self.id,
            "time": self.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "client": self.client,
            "job": self.job,
            "run_id": self.run_id,
            "exit_code": self.exit_code,
            "message": redact(self.message),
            "details": _redact_tree(self.details),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Event:
        return cls(
            name=payload["event"],
            id=payload["id"],
            time=datetime.strptime(payload["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC),
            client=payload.get("client"),
            job=payload.get("job"),
            run_id=payload.get("run_id"),
            exit_code=payload.get("exit_code"),
            message=payload.get("message") or "",
            details=payload.get("details") or {},
        )

    def environment(self) -> dict[str, str]:
        """The STRONGROOM_* variables a command sink gets besides the JSON on stdin."""
        return {
            "STRONGROOM_EVENT": self.name,
            "STRONGROOM_EVENT_ID": self.id,
            "STRONGROOM_CLIENT": self.client or "",
            "STRONGROOM_JOB": self.job or "",
            "STRONGROOM_RUN_ID": self.run_id or "",
            "STRONGROOM_EXIT_CODE": "" if self.exit_code is None else str(self.exit_code),
            "STRONGROOM_MESSAGE": redact(self.message),
        }

    def subject(self) -> str:
        """One line for a mail subject or a chat title."""
        who = "/".join(p for p in (self.client, self.job) if p)
        return f"[strongroom] {self.name}" + (f" {who}" if who else "")


def _redact_tree(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_tree(v) for v in value]
    return value
