"""Each sink kind against a real local endpoint: what arrives, and how failures read.

A sender hands one event to one place or raises DeliveryFailed, whose message is stored
in the outbox and shown to operators: it must never carry the sink's secrets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from strongroom.catalog import Catalog
from strongroom.clock import FakeClock
from strongroom.config import load_config
from strongroom.jobs.notifier import Notifier, retry_delay
from strongroom.notify import (
    AppriseSender,
    CommandSender,
    DeliveryFailed,
    EmailSender,
    Event,
    SyslogSender,
    WebhookSender,
    redact,
)
from tests.notify.servers import (
    HttpReceiver,
    SmtpReceiver,
    SyslogReceiver,
    closed_port,
)

pytestmark = [
    # The test SMTP server offers AUTH without TLS on purpose; apprise imports imghdr.
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
    pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning"),
]

TOKEN = "tok-3f9a1c77e2"  # a token that rides in URLs: must never be in an error


def _event(name: str = "run.failed", **fields: object) -> Event:
    base: dict[str, object] = {
        "client": "dracula",
        "job": "default",
        "run_id": "run-1234",
        "exit_code": 13,
        "message": "dracula/default: integrity error in pack 3fa2",
        "details": {"pack": "3fa2"},
    }
    base.update(fields)
    return Event(name=name, time=dt.datetime(2026, 11, 25, 1, 0, 4, tzinfo=dt.UTC), **base)  # type: ignore[arg-type]


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.stop()


# --- the event itself ----------------------------------------------------------------


def test_the_payload_is_the_spec_object_and_round_trips() -> None:
    event = _event()
    payload = event.payload()
    assert payload == {
        "event": "run.failed",
        "id": event.id,
        "time": "2026-11-25T01:00:04Z",
        "client": "dracula",
        "job": "default",
        "run_id": "run-1234",
        "exit_code": 13,
        "message": "dracula/default: integrity error in pack 3fa2",
        "details": {"pack": "3fa2"},
    }
    assert Event.from_payload(json.loads(json.dumps(payload))).payload() == payload


def test_redact_removes_url_credentials_secret_parameters_and_auth_headers() -> None:
    text = (
        f"POST https://bot:{TOKEN}@hooks.example.com/x?channel=ops&token={TOKEN}x failed; "
        f"Authorization: Bearer {TOKEN}y; s3://KEY:{TOKEN}z@bucket/p"
    )
    clean = redact(text)
    assert TOKEN not in clean
    assert "https://bot:***@hooks.example.com/x?channel=ops&token=***" in clean
    assert "s3://KEY:***@bucket/p" in clean
    # The event redacts its message and every string in its details.
    payload = _event(message=text, details={"error": [text], "n": 3}).payload()
    assert TOKEN not in json.dumps(payload)
    assert payload["details"]["n"] == 3


# --- command -------------------------------------------------------------------------


def test_command_gets_the_json_on_stdin_and_the_variables(tmp_path: Path) -> None:
    out, env = tmp_path / "stdin.json", tmp_path / "env.txt"
    script = f'cat > "{out}"; env > "{env}"'
    event = _event(message="dracula/default: a 'quoted' message")
    CommandSender(["sh", "-c", script], timeout=10, env={"PATH": "/usr/bin:/bin"}).send(event)
    assert json.loads(out.read_bytes()) == event.payload()
    variables = dict(
        line.split("=", 1) for line in env.read_text().splitlines() if line.startswith("STRONG")
    )
    assert variables == {
        "STRONGROOM_EVENT": "run.failed",
        "STRONGROOM_EVENT_ID": event.id,
        "STRONGROOM_CLIENT": "dracula",
        "STRONGROOM_JOB": "default",
        "STRONGROOM_RUN_ID": "run-1234",
        "STRONGROOM_EXIT_CODE": "13",
        "STRONGROOM_MESSAGE": "dracula/default: a 'quoted' message",
    }


def test_a_failing_command_is_delivery_failed_with_its_last_line_redacted() -> None:
    script = f"echo first >&2; echo 'curl https://u:{TOKEN}@pager.example/x: 503' >&2; exit 7"
    with pytest.raises(DeliveryFailed) as caught:
        CommandSender(["sh", "-c", script], timeout=10).send(_event())
    message = str(caught.value)
    assert "exited 7" in message and "pager.example/x: 503" in message
    assert TOKEN not in message


def test_a_command_that_does_not_answer_in_time_fails_within_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(DeliveryFailed, match=r"no answer in 0\.5s"):
        CommandSender(["sleep", "20"], timeout=0.5).send(_event())
    assert time.monotonic() - start < 5


def test_a_missing_command_is_delivery_failed(tmp_path: Path) -> None:
    with pytest.raises(DeliveryFailed, match="could not run"):
        CommandSender([str(tmp_path / "no-such-pager")], timeout=5).send(_event())


# --- webhook -------------------------------------------------------------------------


def test_webhook_posts_the_payload_signed_with_the_secret(http: HttpReceiver) -> None:
    secret = b"whsec-0d1e2f"
    event = _event()
    before = int(time.time())
    WebhookSender(
        http.url(f"/hooks/{TOKEN}"), timeout=5, headers={"X-Api-Key": "key-1"}, secret=secret
    ).send(event)
    [request] = http.received()
    assert (request.method, request.path) == ("POST", f"/hooks/{TOKEN}")
    assert json.loads(request.body) == event.payload()
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == event.id
    assert request.headers["x-strongroom-event"] == "run.failed"
    assert request.headers["x-api-key"] == "key-1"
    stamp = request.headers["x-strongroom-timestamp"]
    assert before <= int(stamp) <= int(time.time())
    expected = hmac.new(secret, stamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-strongroom-signature"], "sha256=" + expected)
    # Signed with another secret, or over another body, the signature does not verify.
    other = hmac.new(b"wrong", stamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-strongroom-signature"] != "sha256=" + other


def test_webhook_without_a_secret_sends_no_signature(http: HttpReceiver) -> None:
    WebhookSender(http.url(), timeout=5).send(_event())
    [request] = http.received()
    assert "x-strongroom-signature" not in request.headers


def test_webhook_http_500_is_delivery_failed_without_the_token(http: HttpReceiver) -> None:
    http.mode = "error"
    with pytest.raises(DeliveryFailed) as caught:
        WebhookSender(http.url(f"/hooks/{TOKEN}?token={TOKEN}"), timeout=5).send(_event())
    assert "HTTP 500" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert len(http.received()) == 1


def test_webhook_that_hangs_fails_within_the_timeout(http: HttpReceiver) -> None:
    http.mode = "hang"
    start = time.monotonic()
    with pytest.raises(DeliveryFailed) as caught:
        WebhookSender(http.url(f"/hooks/{TOKEN}"), timeout=0.5).send(_event())
    assert time.monotonic() - start < 3
    assert TOKEN not in str(caught.value)


def test_webhook_to_a_closed_port_is_delivery_failed_without_the_token() -> None:
    with closed_port() as port, pytest.raises(DeliveryFailed) as caught:
        url = f"http://hook:{TOKEN}@127.0.0.1:{port}/hooks/{TOKEN}"
        WebhookSender(url, timeout=2, headers={"Authorization": f"Bearer {TOKEN}"}).send(_event())
    assert "unreachable" in str(caught.value) and TOKEN not in str(caught.value)


def test_webhook_answering_garbage_is_delivery_failed(http: HttpReceiver) -> None:
    http.mode = "garbage"
    with pytest.raises(DeliveryFailed) as caught:
        WebhookSender(http.url(f"/hooks/{TOKEN}"), timeout=5).send(_event())
    assert TOKEN not in str(caught.value)


def test_webhook_does_not_follow_a_redirect_with_its_secrets(http: HttpReceiver) -> None:
    """A 302 is not a delivery (urllib would re-send as a GET without the event), and
    the secret headers must not be replayed to wherever the redirect points."""
    elsewhere = HttpReceiver()
    try:
        http.mode = "redirect"
        http.redirect_to = elsewhere.url("/collect")
        with pytest.raises(DeliveryFailed, match="302"):
            WebhookSender(http.url(), timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}).send(
                _event()
            )
        assert elsewhere.received() == []
    finally:
        elsewhere.stop()


# --- email ---------------------------------------------------------------------------


def _mail_config(tmp_path: Path, port: int, extra: str = "") -> Notifier:
    (tmp_path / "smtp.pass").write_text("smtp-pw-51c9\n")
    (tmp_path / "strongroom.toml").write_text(
        f'[notify.mail]\nkind = "email"\nto = ["ops@example.com", "dba@example.com"]\n'
        f'from = "strongroom@example.com"\nhost = "127.0.0.1"\nport = {port}\n'
        f'username = "robot"\npassword_file = "smtp.pass"\ntimeout = "5s"\n{extra}'
    )
    config = load_config(tmp_path / "strongroom.toml")
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", auto_migrate=True)
    return Notifier(config, catalog, FakeClock(), {})


def test_email_carries_subject_message_id_and_the_json_body() -> None:
    smtp = SmtpReceiver()
    try:
        event = _event()
        EmailSender("127.0.0.1", smtp.port, "sr@example.com", ["ops@example.com"], 5).send(event)
        [mail] = smtp.mails
    finally:
        smtp.stop()
    assert mail.rcpt_tos == ["ops@example.com"] and mail.mail_from == "sr@example.com"
    parsed = message_from_bytes(mail.content, policy=policy.default)
    assert parsed["Subject"] == (
        "[strongroom] run.failed dracula/default: dracula/default: integrity error in pack 3fa2"
    )
    assert event.id in parsed["Message-ID"]
    assert parsed["X-Strongroom-Event"] == "run.failed"
    body = parsed.get_body(("plain",))
    assert body is not None
    assert json.loads(body.get_content()) == event.payload()


def test_email_logs_in_with_the_password_from_its_file(tmp_path: Path) -> None:
    smtp = SmtpReceiver(credentials=("robot", "smtp-pw-51c9"))
    try:
        notifier = _mail_config(tmp_path, smtp.port)
        notifier.sender(notifier.config.sink("mail")).send(_event())
        [mail] = smtp.mails
    finally:
        smtp.stop()
    assert mail.login == "robot"
    assert smtp.logins == [("robot", "smtp-pw-51c9")]
    assert sorted(mail.rcpt_tos) == ["dba@example.com", "ops@example.com"]


def test_email_with_a_wrong_password_is_delivery_failed_without_it(tmp_path: Path) -> None:
    smtp = SmtpReceiver(credentials=("robot", "another-password"))
    try:
        notifier = _mail_config(tmp_path, smtp.port)
        with pytest.raises(DeliveryFailed, match="refused the login") as caught:
            notifier.sender(notifier.config.sink("mail")).send(_event())
        assert smtp.mails == []
    finally:
        smtp.stop()
    assert "smtp-pw-51c9" not in str(caught.value)


def test_email_with_a_message_of_several_lines_is_still_one_mail() -> None:
    """A mark note or a command's output may bring a newline into the message: the
    subject must stay one header line, not make the sender crash."""
    smtp = SmtpReceiver()
    try:
        event = _event(message="dracula/default: marker sql-dump (note: line one\nline two)")
        EmailSender("127.0.0.1", smtp.port, "sr@example.com", ["ops@example.com"], 5).send(event)
        [mail] = smtp.mails
    finally:
        smtp.stop()
    parsed = message_from_bytes(mail.content, policy=policy.default)
    assert "line one" in parsed["Subject"] and "\n" not in parsed["Subject"]
    assert event.id in parsed["Message-ID"]


def test_email_to_a_closed_port_is_delivery_failed() -> None:
    with closed_port() as port, pytest.raises(DeliveryFailed, match="unreachable"):
        EmailSender("127.0.0.1", port, "sr@example.com", ["ops@example.com"], 2).send(_event())


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    localhost = ipaddress.ip_address("127.0.0.1")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(localhost)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_starttls_verifies_the_server_before_sending_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STARTTLS to a server whose certificate nobody vouches for must not hand it the
    SMTP password; once the certificate is trusted, the login works over TLS."""
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    smtp = SmtpReceiver(credentials=("robot", "smtp-pw-51c9"), tls_context=context)
    try:
        notifier = _mail_config(tmp_path, smtp.port, "starttls = true\n")
        sink = notifier.config.sink("mail")
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
        with pytest.raises(DeliveryFailed):
            notifier.sender(sink).send(_event())
        assert smtp.logins == [] and smtp.mails == []

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        notifier.sender(sink).send(_event())
        assert smtp.logins == [("robot", "smtp-pw-51c9")]
        assert len(smtp.mails) == 1
    finally:
        smtp.stop()


# --- syslog --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facility", "name", "priority"),
    [
        ("local3", "run.failed", 19 * 8 + 3),  # error
        ("daemon", "client.stale", 3 * 8 + 4),  # warning
        ("user", "run.succeeded", 1 * 8 + 5),  # notice
    ],
)
def test_syslog_udp_gets_one_datagram_with_priority_tag_and_json(
    facility: str, name: str, priority: int
) -> None:
    receiver = SyslogReceiver()
    try:
        event = _event(name)
        SyslogSender(receiver.address, facility, "strongroom").send(event)
        data = receiver.receive()
    finally:
        receiver.stop()
    prefix = f"<{priority}>strongroom: ".encode()
    assert data.startswith(prefix), data[:40]
    assert json.loads(data[len(prefix) :]) == event.payload()


@pytest.mark.skipif(sys.platform != "linux", reason="unix datagram sockets")
def test_syslog_to_a_local_socket_and_to_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        SyslogSender(str(path), "local0", "backup").send(_event("run.succeeded"))
        data = sock.recv(65536)
    assert data.startswith(b"<133>backup: {")  # local0 (16) * 8 + notice (5)
    with pytest.raises(DeliveryFailed, match="syslog"):
        SyslogSender(str(tmp_path / "nowhere.sock")).send(_event())


# --- apprise -------------------------------------------------------------------------


def test_apprise_json_url_posts_the_event(http: HttpReceiver) -> None:
    event = _event()
    AppriseSender([f"json://127.0.0.1:{http.port}/notify/{TOKEN}"]).send(event)
    [request] = http.received()
    assert request.method == "POST" and request.path == f"/notify/{TOKEN}"
    body = json.loads(request.body)
    assert body["title"] == "[strongroom] run.failed dracula/default"
    assert event.id in body["message"] and "integrity error in pack 3fa2" in body["message"]


def test_apprise_bad_or_unreachable_url_is_delivery_failed() -> None:
    with pytest.raises(DeliveryFailed) as caught:
        AppriseSender([f"nosuchservice://{TOKEN}@example"]).send(_event())
    assert "#1" in str(caught.value) and TOKEN not in str(caught.value)
    with closed_port() as port, pytest.raises(DeliveryFailed) as caught:
        AppriseSender([f"json://user:{TOKEN}@127.0.0.1:{port}/x"]).send(_event())
    assert TOKEN not in str(caught.value)


# --- backoff -------------------------------------------------------------------------


def test_retry_delay_doubles_from_30s_to_an_hour_with_jitter() -> None:
    import random

    rng = random.Random(7)
    for attempts, base in [(1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (40, 3600)]:
        for _ in range(20):
            assert 0.8 * base <= retry_delay(attempts, rng) <= 1.2 * base
