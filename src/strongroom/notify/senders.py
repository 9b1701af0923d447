"""One sender per sink kind: hand one event to one place, or raise DeliveryFailed.

A sender never retries (the outbox does, with backoff) and never puts its secrets (a
webhook's URL and headers, an SMTP password, apprise URLs) into an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

from strongroom import __version__
from strongroom.notify.event import Event, redact
from strongroom.process import run_command


class DeliveryFailed(Exception):
    """The sink did not take the event; the message is safe to store and show."""


class Sender(Protocol):
    def send(self, event: Event) -> None: ...


def event_json(event: Event, *, indent: int | None = None) -> bytes:
    return json.dumps(event.payload(), sort_keys=True, indent=indent).encode()


@dataclass(frozen=True)
class CommandSender:
    """Runs ``argv`` with the event as JSON on stdin and STRONGROOM_* variables; exit 0
    means delivered. At ``timeout`` it is killed with everything it started."""

    argv: Sequence[str]
    timeout: float
    env: Mapping[str, str] = field(default_factory=dict)

    def send(self, event: Event) -> None:
        name = self.argv[0]
        try:
            proc = run_command(
                self.argv,
                input=event_json(event),
                env={**self.env, **event.environment()},
                timeout=self.timeout,
            )
        except OSError as e:
            raise DeliveryFailed(f"command {name} could not run: {e.strerror}") from None
        except subprocess.TimeoutExpired:
            raise DeliveryFailed(f"command {name} gave no answer in {self.timeout:g}s") from None
        if proc.returncode != 0:
            last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise DeliveryFailed(
                f"command {name} exited {proc.returncode}"
                + (f": {redact(last[0])}" if last[0] else "")
            )


@dataclass(frozen=True)
class WebhookSender:
    """POSTs the event as JSON.

    With a secret, ``X-Strongroom-Signature: sha256=HEX`` is the HMAC-SHA256 of
    ``TIMESTAMP.BODY`` under the secret, ``TIMESTAMP`` being the
    ``X-Strongroom-Timestamp`` header (Unix seconds): the receiver recomputes it and
    rejects old timestamps to refuse replays. ``Idempotency-Key`` is the event id.
    """

    url: str
    timeout: float
    headers: Mapping[str, str] = field(default_factory=dict)
    secret: bytes | None = None

    def send(self, event: Event) -> None:
        body = event_json(event)
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"strongroom/{__version__}",
            "X-Strongroom-Event": event.name,
            "Idempotency-Key": event.id,
            "X-Strongroom-Timestamp": stamp,
            **self.headers,
        }
        if self.secret is not None:
            mac = hmac.new(self.secret, stamp.encode() + b"." + body, hashlib.sha256)
            headers["X-Strongroom-Signature"] = "sha256=" + mac.hexdigest()
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with _NO_REDIRECTS.open(request, timeout=self.timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as e:
            e.close()  # it holds the response and its socket
            raise DeliveryFailed(f"webhook answered HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            text = getattr(reason, "strerror", None) or type(reason).__name__
            raise DeliveryFailed(f"webhook unreachable: {text}") from None
        except (http.client.HTTPException, ValueError) as e:
            # Not HTTP (BadStatusLine...), or a URL http.client refuses: the message
            # could quote the URL, so only the kind of failure is told.
            raise DeliveryFailed(f"webhook failed: {type(e).__name__}") from None


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is not a delivery: urllib would re-send the POST as a GET without
    its body, and replay the secret headers to wherever the Location points."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx becomes an HTTPError


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


@dataclass(frozen=True)
class EmailSender:
    """Mails the event through an SMTP server; the Message-ID carries the event id, so
    a mail system can drop a duplicate."""

    host: str
    port: int
    sender: str
    to: Sequence[str]
    timeout: float
    starttls: bool = False
    username: str | None = None
    password: str | None = None

    def send(self, event: Event) -> None:
        mail = EmailMessage()
        # One header line: a message may quote multi-line output.
        mail["Subject"] = " ".join((event.subject() + ": " + redact(event.message)).split())[:200]
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.to)
        mail["Message-ID"] = f"<{event.id}@strongroom>"
        mail["X-Strongroom-Event"] = event.name
        mail.set_content(event_json(event, indent=2).decode() + "\n")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:  # verified: the password goes over this connection
                    smtp.starttls(context=ssl.create_default_context())
                if self.username is not None:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(mail)
        except smtplib.SMTPAuthenticationError as e:
            raise DeliveryFailed(
                f"SMTP {self.host}:{self.port} refused the login ({e.smtp_code})"
            ) from None
        except smtplib.SMTPResponseException as e:
            raise DeliveryFailed(f"SMTP {self.host}:{self.port} answered {e.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as e:
            text = getattr(e, "strerror", None) or type(e).__name__
            raise DeliveryFailed(f"SMTP {self.host}:{self.port} unreachable: {text}") from None


FACILITIES = {
    "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "cron": 9, "authpriv": 10,
    **{f"local{i}": 16 + i for i in range(8)},
}  # fmt: skip
_ERROR_EVENTS = {"run.failed", "client.unreachable", "prerequisite.failed", "hook.failed",
                 "check.failed"}  # fmt: skip


@dataclass(frozen=True)
class SyslogSender:
    """Logs the event (RFC 3164 framing, JSON text) to a local socket path or to
    HOST:PORT over UDP. Failures are errors, warnings and staleness warnings, the rest
    notices."""

    address: str
    facility: str = "daemon"
    tag: str = "strongroom"

    def send(self, event: Event) -> None:
        severity = 3 if event.name in _ERROR_EVENTS else 4 if event.name in (
            "run.warning", "client.stale", "media.due") else 5  # fmt: skip
        priority = FACILITIES[self.facility] * 8 + severity
        line = f"<{priority}>{self.tag}: " + event_json(event).decode()
        data = line.encode()
        try:
            if self.address.startswith("/"):
                self._send_unix(data)
            else:
                host, _, port = self.address.rpartition(":")
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.sendto(data, (host or "127.0.0.1", int(port)))
        except (OSError, ValueError) as e:
            text = getattr(e, "strerror", None) or str(e)
            raise DeliveryFailed(f"syslog {self.address}: {text}") from None

    def _send_unix(self, data: bytes) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.send(data)
        except OSError as e:
            if e.errno is None or e.errno not in (91, 107):  # EPROTOTYPE / not datagram
                raise
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(self.address)
                sock.sendall(data + b"\n")


@dataclass(frozen=True)
class AppriseSender:
    """Sends the event to apprise URLs (Slack, Teams, PagerDuty, ntfy, ...). The URLs
    carry tokens: apprise's own logging is kept quiet so they never reach a log."""

    urls: Sequence[str]

    def send(self, event: Event) -> None:
        try:
            import apprise
        except ImportError:
            raise DeliveryFailed(
                "apprise is not installed (pip install 'strongroom[apprise]')"
            ) from None
        logging.getLogger("apprise").setLevel(logging.CRITICAL)
        notifier = apprise.Apprise()
        for index, url in enumerate(self.urls):
            if not notifier.add(url):
                raise DeliveryFailed(f"apprise URL #{index + 1} is not one apprise understands")
        body = redact(event.message) + "\n\n" + event_json(event, indent=2).decode()
        if not notifier.notify(title=event.subject(), body=body):
            raise DeliveryFailed(
                f"apprise could not deliver to every one of {len(self.urls)} URL(s)"
            )
