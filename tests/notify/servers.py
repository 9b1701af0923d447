"""Real local endpoints for the sinks: an HTTP receiver, an SMTP server, a syslog socket.

Every server binds 127.0.0.1 on a free port, records what it received, and is stopped
by the fixture that started it. The HTTP receiver can also answer 500, send a 302, talk
garbage or hang; ``closed_port`` gives a port that refuses connections ("down").
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port that is bound but not listening: every connection to it is refused, and
    no other test can take it until the block ends (then a server may start on it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


# --- HTTP ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class HttpReceiver:
    """A threaded HTTP server recording every request.

    ``mode`` decides the answer: ``ok`` (200), ``error`` (500), ``redirect`` (302 to
    ``redirect_to``), ``garbage`` (not HTTP at all) or ``hang`` (no answer until stop).
    """

    def __init__(self, port: int = 0) -> None:
        self.mode = "ok"
        self.redirect_to = ""
        self.requests: list[HttpRequest] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._record()

            def do_GET(self) -> None:
                self._record()

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append(HttpRequest(self.command, self.path, headers, body))
                mode = receiver.mode
                if mode == "hang":
                    receiver._release.wait(30)
                    return
                if mode == "garbage":
                    self.wfile.write(b"this is not HTTP\r\n\r\n")
                    return
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", receiver.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 200 if mode == "ok" else 500
                payload = b"{}" if status == 200 else b"boom"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self) -> list[HttpRequest]:
        with self._lock:
            return list(self.requests)

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --- SMTP ----------------------------------------------------------------------------


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    login: str | None


@dataclass
class _Recorder:
    mails: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)  # (user, password) tried

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), content, login))
        return "250 OK"


class SmtpReceiver:
    """aiosmtpd on 127.0.0.1, recording each mail; with ``credentials`` it offers AUTH
    (also without TLS, as a test-only convenience) and accepts only that login."""

    def __init__(
        self,
        credentials: tuple[str, str] | None = None,
        tls_context: Any = None,
    ) -> None:
        self.recorder = _Recorder()
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if credentials is not None:
            kwargs.update(authenticator=self._authenticator(credentials), auth_required=True)
            kwargs.update(auth_require_tls=tls_context is not None)
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=True)
        self.controller = Controller(
            self.recorder, hostname="127.0.0.1", port=self.port, ready_timeout=10, **kwargs
        )
        self.controller.start()

    def _authenticator(self, credentials: tuple[str, str]) -> Callable[..., AuthResult]:
        recorder = self.recorder

        def authenticate(
            server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            user, password = data.login.decode(), data.password.decode()
            recorder.logins.append((user, password))
            ok = (user, password) == credentials
            return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

        return authenticate

    @property
    def mails(self) -> list[Mail]:
        return list(self.recorder.mails)

    @property
    def logins(self) -> list[tuple[str, str]]:
        return list(self.recorder.logins)

    def stop(self) -> None:
        self.controller.stop()


# --- syslog --------------------------------------------------------------------------


class SyslogReceiver:
    """A UDP socket on 127.0.0.1 that syslog datagrams are sent to."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = int(self.sock.getsockname()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def receive(self) -> bytes:
        data, _ = self.sock.recvfrom(65536)
        return data

    def stop(self) -> None:
        self.sock.close()
