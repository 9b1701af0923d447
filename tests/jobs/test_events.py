"""Events through the outbox, driven by the CLI: stored first, delivered at least once
and never lost, filtered per sink, one terminal event per run (R11), no secret in any
of it (R18)."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strongroom.catalog import Catalog
from strongroom.catalog.outbox import Outbox
from strongroom.clock import FakeClock
from strongroom.config import load_config
from strongroom.jobs.notifier import Notifier
from strongroom.notify import Event
from tests.conftest import PASSWORD, Result, cli
from tests.notify.servers import HttpReceiver, SmtpReceiver, closed_port

pytestmark = [
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
    pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning"),
]

PAGED = ["run.failed", "client.unreachable", "prerequisite.failed", "hook.failed"]


class Fleet:
    """A config with local clients, one repository and the given sinks; every client's
    default job notifies ``notify``."""

    def __init__(self, root: Path, offline_port: int, password: str = PASSWORD) -> None:
        self.root = root
        self.repo = root / "repo"
        self.offline_port = offline_port
        self.password = password
        self.catalog_db = root / "state" / "catalog.db"
        self.pages = root / "pages.jsonl"
        for name in ("alpha", "locked", "hooked"):
            (root / "data" / name).mkdir(parents=True)
            (root / "data" / name / "file.txt").write_text(f"data of {name}\n" * 50)
        (root / "pass").write_text(password + "\n")
        pager = root / "pager.sh"
        pager.write_text(
            f'#!/bin/sh\n{{ cat; echo; }} >> "{self.pages}"\nenv >> "{root}/pager.env"\n'
        )
        pager.chmod(0o755)

    def write(self, sinks: str, notify: list[str]) -> None:
        root = self.root
        clients = textwrap.dedent(f"""
            [clients.alpha]
            transport = "local"
            sources = ["{root}/data/alpha"]

            [clients.locked]
            transport = "local"
            sources = ["{root}/data/locked"]
            [[clients.locked.requires]]
            kind = "marker"
            name = "sql-dump"
            max_age = "12h"

            [clients.hooked]
            transport = "local"
            sources = ["{root}/data/hooked"]
            [[clients.hooked.hooks]]
            when = "before"
            on = "director"
            command = ["sh", "-c", "echo the dump is locked >&2; exit 4"]

            [clients.offline]
            transport = "ssh"
            host = "127.0.0.1"
            port = {self.offline_port}
            sources = ["/srv"]
        """)
        (root / "strongroom.toml").write_text(
            f'[repositories.main]\nurl = "{self.repo}"\npassword_file = "{root}/pass"\n\n'
            f'[defaults]\nrepository = "main"\nnotify = {json.dumps(notify)}\n\n'
            f"{sinks}\n{clients}"
        )

    def paged(self) -> list[dict[str, object]]:
        if not self.pages.exists():
            return []
        return [json.loads(line) for line in self.pages.read_text().splitlines() if line]


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    assert cli("--repo", str(tmp_path / "repo"), "init").code == 0
    monkeypatch.delenv("STRONGROOM_PASSWORD")  # the config's password_file must suffice
    with closed_port() as port:
        yield Fleet(tmp_path, port)


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.stop()


def pager_sink(fleet: Fleet, name: str = "pager", events: list[str] | None = None) -> str:
    sink = f'[notify.{name}]\nkind = "command"\ncommand = ["{fleet.root}/pager.sh"]\n'
    return sink + (f"events = {json.dumps(events)}\n" if events is not None else "")


def webhook_sink(url: str, name: str = "hook", extra: str = "") -> str:
    return f'[notify.{name}]\nkind = "webhook"\nurl = "{url}"\ntimeout = "3s"\n{extra}'


def events(*args: str) -> list[dict[str, object]]:
    r = cli("events", "list", "--json", *args)
    assert r.code == 0, r.stderr
    return list(json.loads(r.stdout))


def deliveries(event: dict[str, object]) -> dict[str, dict[str, object]]:
    return {str(d["sink"]): d for d in event["deliveries"]}  # type: ignore[attr-defined]


def run(client: str, *args: str) -> tuple[Result, dict[str, object]]:
    r = cli("run", client, "--json", *args)
    summary = [json.loads(x) for x in r.stdout.splitlines() if x.strip()][-1]
    return r, summary


# --- the outbox ----------------------------------------------------------------------


def test_every_event_is_in_the_catalog_before_any_sink_sees_it(fleet: Fleet) -> None:
    seen = fleet.root / "seen.txt"
    checker = fleet.root / "checker.py"
    checker.write_text(
        f"#!{sys.executable}\nimport json, sqlite3, sys\n"
        "event = json.load(sys.stdin)\n"
        f"db = sqlite3.connect({str(fleet.catalog_db)!r})\n"
        "n = db.execute('SELECT count(*) FROM events WHERE id = ?', (event['id'],)).fetchone()[0]\n"
        f"open({str(seen)!r}, 'a').write(f\"{{event['event']}} {{event['id']}} {{n}}\\n\")\n"
    )
    checker.chmod(0o755)
    fleet.write(f'[notify.check]\nkind = "command"\ncommand = ["{checker}"]\n', ["check"])
    r, summary = run("alpha")
    assert r.code == 0, r.stderr
    lines = [line.split() for line in seen.read_text().splitlines()]
    assert [(name, n) for name, _, n in lines] == [("run.started", "1"), ("run.succeeded", "1")]
    stored = {str(e["id"]): e for e in events()}
    assert {event_id for _, event_id, _ in lines} == set(stored)
    assert all(deliveries(e)["check"]["state"] == "delivered" for e in stored.values())
    assert {e["run_id"] for e in stored.values()} == {summary["run_id"]}


def test_a_down_webhook_loses_nothing_and_gets_each_event_once(fleet: Fleet) -> None:
    with closed_port() as port:
        fleet.write(webhook_sink(f"http://127.0.0.1:{port}/hook"), ["hook"])
        r = cli("run", "alpha")
        assert r.code == 0, r.stderr  # a sink's trouble never becomes the run's exit code
        assert r.stderr.count("not delivered to hook (will retry): webhook unreachable") == 2
        listed = cli("events", "list", "--pending")
        assert listed.stdout.count("hook=pending(1)") == 2
        assert listed.stdout.count("    hook: webhook unreachable: Connection refused") == 2
        pending = events("--pending")
        assert sorted(str(e["event"]) for e in pending) == ["run.started", "run.succeeded"]
        for e in pending:
            d = deliveries(e)["hook"]
            assert (d["state"], d["attempts"]) == ("pending", 1)
            assert "webhook unreachable" in str(d["last_error"])
            assert d["next_attempt_at"] is not None and d["delivered_at"] is None

        # Not yet due: a plain deliver right after the failure does not retry.
        r = cli("events", "deliver", "--json")
        assert r.code == 0 and json.loads(r.stdout)["delivered"] == 0
        assert [deliveries(e)["hook"]["attempts"] for e in events("--pending")] == [1, 1]

        # Forced while still down: tried again, fails, stays pending; exit 1.
        r = cli("events", "deliver", "--all")
        assert r.code == 1 and "will retry" in r.stderr
        assert [deliveries(e)["hook"]["attempts"] for e in events("--pending")] == [2, 2]

    server = HttpReceiver(port)  # the sink comes back on the same address
    try:
        r = cli("events", "deliver", "--all", "--json")
        assert r.code == 0, r.stdout
        assert json.loads(r.stdout)["delivered"] == 2
        assert events("--pending") == []
        assert cli("events", "deliver", "--all").code == 0  # nothing left: no resend
        received = server.received()
    finally:
        server.stop()
    stored = {str(e["id"]): e for e in events()}
    assert sorted(q.headers["idempotency-key"] for q in received) == sorted(stored)
    for q in received:
        assert json.loads(q.body)["id"] == q.headers["idempotency-key"]
    assert all(deliveries(e)["hook"]["attempts"] == 3 for e in stored.values())


def test_backoff_holds_a_failed_delivery_until_it_is_due(fleet: Fleet) -> None:
    flag = fleet.root / "pager-up"
    script = fleet.root / "flaky.sh"
    script.write_text(
        f'#!/bin/sh\n[ -e "{flag}" ] || {{ echo pager gateway down >&2; exit 3; }}\n'
        f'{{ cat; echo; }} >> "{fleet.pages}"\n'
    )
    script.chmod(0o755)
    fleet.write(
        f'[notify.pager]\nkind = "command"\ncommand = ["{script}"]\nevents = {json.dumps(PAGED)}\n',
        ["pager"],
    )
    r, summary = run("locked")
    assert r.code == 21
    [event] = events("--pending")
    assert event["event"] == "prerequisite.failed"
    d = deliveries(event)["pager"]
    assert d["attempts"] == 1 and "exited 3: pager gateway down" in str(d["last_error"])
    flag.touch()

    config = load_config(fleet.root / "strongroom.toml")
    catalog = Catalog.open(f"sqlite:///{fleet.catalog_db}")
    try:
        now = time.time_ns()
        # 10 s later the retry (30 s +-20% after one failure) is not due...
        soon = Notifier(config, catalog, FakeClock(now + 10 * 10**9), {})
        assert soon.deliver().delivered == []
        assert fleet.paged() == []
        # ...an hour later it is, and the event arrives once.
        later = Notifier(config, catalog, FakeClock(now + 3600 * 10**9), {})
        assert later.deliver().delivered == [(event["id"], "pager")]
        assert later.deliver().delivered == []
    finally:
        catalog.close()
    [page] = fleet.paged()
    assert page["id"] == event["id"] and page["run_id"] == summary["run_id"]
    assert events("--pending") == []


def test_each_sink_gets_only_the_events_it_asks_for(fleet: Fleet, http: HttpReceiver) -> None:
    hook = webhook_sink(http.url(), extra='events = ["run.succeeded"]\n')
    fleet.write(pager_sink(fleet, events=PAGED) + hook, ["pager", "hook"])
    assert run("alpha")[0].code == 0
    assert run("locked")[0].code == 21
    by_name = {str(e["event"]): e for e in events("--client", "alpha")}
    assert set(deliveries(by_name["run.succeeded"])) == {"hook"}
    assert deliveries(by_name["run.started"]) == {}  # nobody wants it
    [failed] = events("--client", "locked", "--event", "prerequisite.failed")
    assert set(deliveries(failed)) == {"pager"}
    assert [p["event"] for p in fleet.paged()] == ["prerequisite.failed"]
    assert [json.loads(q.body)["event"] for q in http.received()] == ["run.succeeded"]


def test_the_same_event_id_stored_twice_is_one_event(fleet: Fleet) -> None:
    fleet.write(pager_sink(fleet), ["pager"])
    config = load_config(fleet.root / "strongroom.toml")
    catalog = Catalog.open(f"sqlite:///{fleet.catalog_db}", auto_migrate=True)
    try:
        notifier = Notifier(config, catalog, FakeClock(), {})
        event = notifier.event(
            "run.failed", client="alpha", job="default", exit_code=1, message="alpha/default: boom"
        )
        first = notifier.emit(event)
        second = notifier.emit(event)
        third = notifier.emit(Event(**{**event.__dict__, "message": "something else"}))
        stored = Outbox(catalog).events()
    finally:
        catalog.close()
    assert first.delivered == [(event.id, "pager")]
    assert second.delivered == [] and third.delivered == []
    assert [(r.id, [d.sink for d in ds]) for r, ds in stored] == [(event.id, ["pager"])]
    assert [p["id"] for p in fleet.paged()] == [event.id]
    assert fleet.paged()[0]["message"] == "alpha/default: boom"


def test_a_stale_client_pages_once_a_day(fleet: Fleet) -> None:
    fleet.write(pager_sink(fleet, events=["client.stale"]), ["pager"])
    config = load_config(fleet.root / "strongroom.toml")
    catalog = Catalog.open(f"sqlite:///{fleet.catalog_db}", auto_migrate=True)
    clock = FakeClock()  # 2025-11-25 00:00 UTC
    try:
        notifier = Notifier(config, catalog, clock, {})
        for _ in range(24):  # the monitor runs every hour for a day, then the next day
            notifier.emit(notifier.stale_event("alpha", None, 86400))
            clock.advance(3600)
        notifier.emit(notifier.stale_event("alpha", None, 86400))
        notifier.emit(notifier.stale_event("locked", None, 86400))
    finally:
        catalog.close()
    pages = fleet.paged()
    assert [(p["client"], p["time"][:10]) for p in pages] == [
        ("alpha", "2025-11-25"), ("alpha", "2025-11-26"), ("locked", "2025-11-26"),
    ]  # fmt: skip
    assert len({p["id"] for p in pages}) == 3
    assert pages[0]["details"] == {"last_success": None, "max_age_s": 86400}


def test_events_test_reports_delivery_and_unknown_sinks(fleet: Fleet, http: HttpReceiver) -> None:
    with closed_port() as port:
        fleet.write(
            webhook_sink(http.url(), "up") + webhook_sink(f"http://127.0.0.1:{port}/", "down"),
            ["up"],
        )
        r = cli("events", "test", "up")
        assert r.code == 0 and "delivered to up" in r.stdout, r.stderr
        [request] = http.received()
        assert json.loads(request.body)["event"] == "test"

        r = cli("events", "test", "down")
        assert r.code == 1
        assert "not delivered to down" in r.stderr and "webhook unreachable" in r.stderr
        r = cli("events", "test", "down", "--json")
        assert r.code == 1 and json.loads(r.stdout)["delivered"] is False

    r = cli("events", "test", "nosuch")
    assert r.code == 2 and "nosuch" in r.stderr
    # A test event is tried once and never retried by `deliver`.
    assert cli("events", "deliver", "--all").code == 0
    assert len(http.received()) == 1


def test_deliver_sink_sends_only_to_that_sink_and_refuses_unknown_names(fleet: Fleet) -> None:
    flag = fleet.root / "up"
    down_until_flag = f'["sh", "-c", "test -e {flag} && cat >> {fleet.root}/{{}}"]'
    fleet.write(
        f'[notify.one]\nkind = "command"\ncommand = {down_until_flag.format("one.jsonl")}\n'
        f'[notify.two]\nkind = "command"\ncommand = {down_until_flag.format("two.jsonl")}\n',
        ["one", "two"],
    )
    assert run("alpha")[0].code == 0
    assert len(events("--pending")) == 2
    flag.touch()
    r = cli("events", "deliver", "--all", "--sink", "one", "--json")
    assert r.code == 0 and json.loads(r.stdout)["delivered"] == 2
    assert (fleet.root / "one.jsonl").exists() and not (fleet.root / "two.jsonl").exists()
    assert {deliveries(e)["two"]["state"] for e in events()} == {"pending"}

    r = cli("events", "deliver", "--all", "--sink", "tow")
    assert r.code == 2 and "tow" in r.stderr
    assert {deliveries(e)["two"]["state"] for e in events()} == {"pending"}


def test_a_sink_gives_up_after_max_attempts(fleet: Fleet) -> None:
    fleet.write(
        '[notify.pager]\nkind = "command"\ncommand = ["false"]\nmax_attempts = 2\n'
        'events = ["prerequisite.failed"]\n',
        ["pager"],
    )
    assert run("locked")[0].code == 21
    [event] = events("--pending")
    assert deliveries(event)["pager"]["state"] == "pending"
    r = cli("events", "deliver", "--all")
    assert r.code == 1 and "given up" in r.stderr
    d = deliveries(events()[0])["pager"]
    assert (d["state"], d["attempts"], d["next_attempt_at"]) == ("failed", 2, None)
    assert "exited 1" in str(d["last_error"])
    r = cli("events", "deliver", "--all", "--json")  # a failed delivery is not retried
    assert r.code == 0 and json.loads(r.stdout)["delivered"] == 0
    assert deliveries(events()[0])["pager"]["attempts"] == 2


def test_a_sink_that_breaks_unexpectedly_does_not_break_the_run(fleet: Fleet) -> None:
    """A non-ASCII SMTP password makes smtplib raise UnicodeEncodeError: the run must
    still finish and record itself, and the event wait in the outbox."""
    smtp = SmtpReceiver(credentials=("robot", "pässwort"))
    try:
        (fleet.root / "smtp.pass").write_text("pässwort\n")
        fleet.write(
            f'[notify.mail]\nkind = "email"\nto = ["ops@example.com"]\nfrom = "sr@example.com"\n'
            f'host = "127.0.0.1"\nport = {smtp.port}\nusername = "robot"\n'
            f'password_file = "{fleet.root}/smtp.pass"\n',
            ["mail"],
        )
        r, summary = run("alpha")
    finally:
        smtp.stop()
    assert r.code == 0, r.stdout + r.stderr
    assert summary["snapshot_id"]
    status = json.loads(cli("status", "--json").stdout)
    assert {c["client"]: c["last_run"] and c["last_run"]["status"]
            for c in status["clients"]}["alpha"] == "succeeded"  # fmt: skip
    pending = events("--pending")
    assert sorted(str(e["event"]) for e in pending) == ["run.started", "run.succeeded"]
    assert all("pässwort" not in str(deliveries(e)["mail"]["last_error"]) for e in pending)


def test_a_claimed_delivery_is_left_alone_until_its_lease_expires(fleet: Fleet) -> None:
    """Two directors delivering at once: each due delivery goes to one of them."""
    fleet.write('[notify.pager]\nkind = "command"\ncommand = ["false"]\n', ["pager"])
    assert run("alpha")[0].code == 0  # both events failed once, now pending
    catalog = Catalog.open(f"sqlite:///{fleet.catalog_db}")
    try:
        outbox = Outbox(catalog)
        later = datetime.now(UTC) + timedelta(hours=2)
        first = outbox.claim_due(later, timedelta(minutes=5))
        assert len(first) == 2
        assert outbox.claim_due(later, timedelta(minutes=5)) == []
        assert len(outbox.claim_due(later + timedelta(minutes=6), timedelta(minutes=5))) == 2
    finally:
        catalog.close()


# --- R11: exactly one terminal event per run -----------------------------------------


def test_each_run_ends_in_exactly_one_event(fleet: Fleet) -> None:
    fleet.write(pager_sink(fleet, events=PAGED), ["pager"])
    expected = {
        "offline": (20, "client.unreachable"),
        "locked": (21, "prerequisite.failed"),
        "hooked": (22, "hook.failed"),
        "alpha": (0, "run.succeeded"),
    }
    run_ids = {}
    for client, (code, _) in expected.items():
        r, summary = run(client)
        assert r.code == code, (client, r.stdout, r.stderr)
        run_ids[client] = summary["run_id"]

    for client, (code, terminal) in expected.items():
        found = events("--client", client)
        assert sorted(str(e["event"]) for e in found) == sorted(["run.started", terminal])
        assert {e["run_id"] for e in found} == {run_ids[client]}
        [end] = [e for e in found if e["event"] == terminal]
        assert end["exit_code"] == code and end["job"] == "default"

    unreachable = events("--event", "client.unreachable")[0]
    assert f"127.0.0.1:{fleet.offline_port}" in str(unreachable["message"])
    unmet = events("--event", "prerequisite.failed")[0]["details"]["unmet"]  # type: ignore[index]
    assert unmet == [{"requirement": "marker sql-dump", "reason": "never marked"}]
    hook = events("--event", "hook.failed")[0]
    assert "the dump is locked" in str(hook["message"])
    assert hook["details"]["hook"] == "before"  # type: ignore[index]
    succeeded = events("--event", "run.succeeded")[0]
    assert succeeded["details"]["snapshot_id"]  # type: ignore[index]
    assert events("--event", "run.failed") == []

    # The pager got each failure once, and nothing else.
    pages = fleet.paged()
    assert sorted(str(p["event"]) for p in pages) == sorted(
        ["client.unreachable", "prerequisite.failed", "hook.failed"]
    )
    assert {p["client"]: p["run_id"] for p in pages} == {
        c: run_ids[c] for c in ("offline", "locked", "hooked")
    }


# --- R18: no secret anywhere ---------------------------------------------------------


MARKS = {
    "repo": "repo-pw-MARK-1a2b3c",
    "url": "url-tok-MARK-4d5e6f",
    "header": "hdr-val-MARK-7a8b9c",
    "whsec": "whsec-MARK-0d1e2f",
    "smtp": "smtp-pw-MARK-3a4b5c",
    "apprise": "apprise-tok-MARK-6d7e8f",
    "cmd": "cmd-tok-MARK-9a0b1c",
    "hook": "hook-pw-MARK-2b3c4d",
}


def _dump_catalog(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert {"events", "event_deliveries", "runs"} <= set(tables)
        return "\n".join(
            f"{table}: {row!r}"
            for table in tables
            for row in db.execute(f'SELECT * FROM "{table}"')
        )
    finally:
        db.close()


def test_no_secret_leaks_into_output_catalog_payloads_or_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: HttpReceiver
) -> None:
    monkeypatch.setenv("STRONGROOM_PASSWORD", MARKS["repo"])
    assert cli("--repo", str(tmp_path / "repo"), "init").code == 0
    smtp = SmtpReceiver(credentials=("robot", MARKS["smtp"]))
    with closed_port() as down, closed_port() as offline:
        fleet = Fleet(tmp_path, offline, password=MARKS["repo"])
        (tmp_path / "whsec").write_text(MARKS["whsec"] + "\n")
        (tmp_path / "smtp.pass").write_text(MARKS["smtp"] + "\n")
        url, header = MARKS["url"], MARKS["header"]
        sinks = (
            webhook_sink(
                http.url(f"/h/{url}?token={url}"), "hook_up",
                f'secret_file = "{tmp_path}/whsec"\n'
                f'[notify.hook_up.headers]\nX-Api-Key = "{header}"\n',
            )
            + webhook_sink(
                f"http://bot:{url}@127.0.0.1:{down}/h/{url}?token={url}", "hook_down",
                f'[notify.hook_down.headers]\nAuthorization = "Bearer {header}"\n',
            )
            + f'[notify.mail]\nkind = "email"\nto = ["ops@example.com"]\nfrom = "sr@example.com"\n'
            f'host = "127.0.0.1"\nport = {smtp.port}\nusername = "robot"\n'
            f'password_file = "{tmp_path}/smtp.pass"\ntimeout = "5s"\n'
            f'[notify.chat_up]\nkind = "apprise"\n'
            f'urls = ["json://user:{MARKS["apprise"]}@127.0.0.1:{http.port}/chat"]\n'
            f'[notify.chat_down]\nkind = "apprise"\n'
            f'urls = ["json://user:{MARKS["apprise"]}@127.0.0.1:{down}/chat"]\n'
            + pager_sink(fleet)
            + f'[notify.pager_bad]\nkind = "command"\ncommand = ["sh", "-c", '
            f"\"echo 'POST https://pager:{MARKS['cmd']}@pager.example/v1: 503' >&2; exit 1\"]\n"
        )  # fmt: skip
        names = ["hook_up", "hook_down", "mail", "chat_up", "chat_down", "pager", "pager_bad"]
        fleet.write(sinks, names)
        # A failing hook quotes a URL with a password: the run's message quotes the hook.
        config = tmp_path / "strongroom.toml"
        locked = f"echo the dump at https://dump:{MARKS['hook']}@db/app is locked"
        config.write_text(config.read_text().replace("echo the dump is locked", locked))
        try:
            results = [
                cli("-v", "run", "alpha"),
                cli("-v", "run", "locked", "offline", "hooked"),
                cli("-v", "run", "alpha", "--json"),
                cli("-v", "events", "deliver", "--all"),
                cli("-v", "events", "test", "hook_down"),
                cli("-v", "events", "test", "chat_down"),
                cli("-v", "events", "test", "mail"),
                cli("-v", "status", "--stale", "1d"),
                cli("-v", "events", "list"),
                cli("-v", "events", "list", "--json"),
                cli("-v", "config", "check"),
                cli("-v", "report", "--format", "json"),
                cli("-v", "config", "check", "--json"),
            ]
        finally:
            smtp.stop()

    # The secrets were really used, and deliveries both succeeded and failed.
    assert results[0].code == 0 and results[1].code == 20, results[1].stderr
    assert any(q.headers.get("x-api-key") == header for q in http.received())
    assert any(q.path.startswith("/chat") for q in http.received())
    assert ("robot", MARKS["smtp"]) in smtp.logins and smtp.mails
    stored = json.loads(results[9].stdout)
    states = [d for e in stored for d in e["deliveries"]]
    good = {d["state"] for d in states if d["sink"] in ("hook_up", "mail", "pager")}
    assert good == {"delivered"}
    errors = [str(d["last_error"]) for d in states if d["last_error"]]
    assert any("webhook unreachable" in e for e in errors)
    assert any("apprise" in e for e in errors)
    # A command's error quoting a URL with credentials is stored redacted.
    assert any("https://pager:***@pager.example/v1: 503" in e for e in errors)

    everything = "\n".join(
        [r.stdout + r.stderr for r in results]
        + [json.dumps(stored), _dump_catalog(fleet.catalog_db), fleet.pages.read_text()]
    )
    for kind, mark in MARKS.items():
        assert mark not in everything, f"the {kind} secret leaked"
    # The pager script ran with the director's environment, minus its secrets.
    pager_env = (tmp_path / "pager.env").read_text()
    assert "STRONGROOM_EVENT=" in pager_env
    assert MARKS["repo"] not in pager_env
