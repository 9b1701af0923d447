"""A fault-injecting HTTP proxy between boto3 and a real S3 server, for R10.

Requests are forwarded unchanged: SigV4 signs the host, path and query, so nothing
signed may be touched. Instead of forwarding, or after it, the proxy can

    500, 503        answer with that S3 error; the server never saw the request
    403, quota      answer AccessDenied / QuotaExceeded (permanent errors)
    lock-refused    answer 400 InvalidRequest, as AWS does for retention on a plain bucket
    reset           read half the request body (mid-upload), then reset the connection
    stall           say nothing for ``stall_s`` seconds (past the client's read timeout),
                    then reset; the server never saw the request
    lost            forward, then reset instead of answering: done, but the answer is lost
    truncate        forward, answer with the full Content-Length but half the body, reset
    short           forward, answer with half the body and a Content-Length to match
                    (only a Content-Range check can tell)
    drop-token      forward a listing, but remove its NextContinuationToken
    folder-markers  forward a listing, and add the empty "PREFIX/" and "PREFIX/x/" objects
                    that the AWS console creates for "folders"
    ignore-range    forward, then answer 200 with the whole object and no Content-Range,
                    as a server that ignores Range may (needs ``whole``: path -> bytes)

Faults come from rules (``always``) or at random (``inject``): each distinct request
(method, path without the upload id, Range) draws once, on first sight, so a retry of the
same request goes through and a workload with faults still finishes. Every request is
recorded with its fault, so tests can count attempts and retries.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ERRORS = {
    "500": (500, "InternalError", "injected: internal error"),
    "503": (503, "ServiceUnavailable", "injected: service unavailable"),
    "403": (403, "AccessDenied", "injected: access denied"),
    "quota": (403, "QuotaExceeded", "injected: quota exceeded"),
    "lock-refused": (400, "InvalidRequest", "Bucket is missing Object Lock Configuration"),
}
RANDOM_KINDS = ("500", "503", "reset", "stall", "lost", "truncate", "short", "drop-token")
HOP_BY_HOP = {"connection", "keep-alive", "expect", "transfer-encoding", "proxy-connection"}


@dataclass
class Seen:
    """One request as the proxy saw it, and the fault it got (None: forwarded as is)."""

    method: str
    path: str
    headers: dict[str, str]
    fault: str | None = None

    @property
    def is_listing(self) -> bool:
        return self.method == "GET" and "list-type=2" in self.path

    @property
    def is_page_after_first(self) -> bool:
        return self.is_listing and "continuation-token=" in self.path

    @property
    def key(self) -> tuple[str, str, str]:
        path = re.sub(r"uploadId=[^&]*&?", "", self.path)
        return self.method, path, self.headers.get("range", "")


Match = Callable[[Seen], bool]


@dataclass
class _Rule:
    fault: str
    when: Match
    times: int | None


class FaultProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        stall_s: float = 3.0,
        whole: Callable[[str], bytes] | None = None,
    ) -> None:
        self.upstream = upstream
        self.stall_s = stall_s
        self.whole = whole
        self.requests: list[Seen] = []
        self.handler_errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rules: list[_Rule] = []
        self._rate = 0.0
        self._kinds: tuple[str, ...] = ()
        self._rng = random.Random(0)
        self._drawn: set[tuple[str, str, str]] = set()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- configuring ----------------------------------------------------------------

    def always(
        self, fault: str, when: Match = lambda seen: True, times: int | None = None
    ) -> FaultProxy:
        """Give ``fault`` to every request ``when`` matches (the first ``times`` ones)."""
        with self._lock:
            self._rules.append(_Rule(fault, when, times))
        return self

    def inject(self, rate: float, kinds: Iterable[str] = RANDOM_KINDS, seed: int = 0) -> FaultProxy:
        """Give a random fault of ``kinds`` to a ``rate`` share of distinct requests."""
        with self._lock:
            self._rate, self._kinds, self._rng = rate, tuple(kinds), random.Random(seed)
        return self

    def heal(self) -> FaultProxy:
        with self._lock:
            self._rules.clear()
            self._rate = 0.0
        return self

    # --- reading the record ---------------------------------------------------------

    def count(self, match: Match = lambda seen: True) -> int:
        with self._lock:
            return sum(1 for seen in self.requests if match(seen))

    def faults(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for seen in self.requests:
                if seen.fault is not None:
                    counts[seen.fault] = counts.get(seen.fault, 0) + 1
            return counts

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- deciding -------------------------------------------------------------------

    def _decide(self, seen: Seen) -> str | None:
        with self._lock:
            self.requests.append(seen)
            for rule in self._rules:
                if rule.times != 0 and rule.when(seen):
                    if rule.times is not None:
                        rule.times -= 1
                    seen.fault = rule.fault
                    return rule.fault
            if self._rate and seen.key not in self._drawn:
                self._drawn.add(seen.key)
                if self._rng.random() < self._rate:
                    seen.fault = self._rng.choice(self._applicable(seen))
            return seen.fault

    def _applicable(self, seen: Seen) -> list[str]:
        kinds = [k for k in self._kinds if k != "drop-token" or seen.is_listing]
        if "range" not in seen.headers:  # without Content-Range a short body looks whole
            kinds = [k for k in kinds if k != "short"]
        return kinds or ["500"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        import traceback

        # Resets are the point of this proxy; keep anything else for debugging.
        text = traceback.format_exc()
        if "ConnectionResetError" not in text and "BrokenPipeError" not in text:
            self.proxy.handler_errors.append(text)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._relay()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _relay(self) -> None:
        proxy = self.server.proxy
        headers = {k.lower(): v for k, v in self.headers.items()}
        assert "chunked" not in headers.get("transfer-encoding", ""), "unexpected chunked body"
        fault = proxy._decide(Seen(self.command, self.path, headers))
        length = int(headers.get("content-length") or 0)
        if fault == "reset":
            self.rfile.read(length // 2)
            self._reset()
            return
        if fault == "stall":
            proxy._stop.wait(proxy.stall_s)
            self._reset()
            return
        body = self.rfile.read(length) if length else b""
        if fault in ERRORS:
            self._answer_error(*ERRORS[fault])
            return
        status, reason, answer_headers, data = self._forward(body)
        if fault == "lost":
            self._reset()
            return
        if fault == "ignore-range" and status in (200, 206):
            assert proxy.whole is not None, "ignore-range needs whole=..."
            status, reason, data = 200, "OK", proxy.whole(self.path)
            answer_headers = [(k, v) for k, v in answer_headers if k.lower() != "content-range"]
        if fault == "folder-markers":
            data = _add_folder_markers(self.path, data)
        if fault == "drop-token" and b"<IsTruncated>true</IsTruncated>" in data:
            data = re.sub(rb"<NextContinuationToken>.*?</NextContinuationToken>", b"", data)
        declared = len(data)
        if fault in ("truncate", "short"):
            if not data:
                self._reset()  # nothing to cut: the answer is lost instead
                return
            data = data[: len(data) // 2]
            declared = len(data) if fault == "short" else declared
        self.send_response_only(status, reason)
        for name, value in answer_headers:
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", dict(answer_headers).get("Content-Length", "0"))
        elif status not in (204, 304):
            self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(data)
        if fault == "truncate":
            self.wfile.flush()
            self._reset()

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        host, port = self.server.proxy.upstream
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            conn.endheaders(body or None)
            answer = conn.getresponse()
            data = answer.read()
            return answer.status, answer.reason, answer.getheaders(), data
        finally:
            conn.close()

    def _answer_error(self, status: int, code: str, message: str) -> None:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        data = b"" if self.command == "HEAD" else xml
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reset(self) -> None:
        """Close with a TCP reset, as a dying middlebox or server would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _add_folder_markers(path: str, listing: bytes) -> bytes:
    prefix = parse_qs(urlsplit(path).query).get("prefix", [""])[0]
    markers = b"".join(
        b"<Contents><Key>%s</Key><Size>0</Size><StorageClass>STANDARD</StorageClass>"
        b"<LastModified>2025-01-01T00:00:00.000Z</LastModified></Contents>" % key.encode()
        for key in (prefix, prefix + "x/")
        if key
    )
    return listing.replace(b"</ListBucketResult>", markers + b"</ListBucketResult>")
