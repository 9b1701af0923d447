"""Retention: restic's forget rules, by hand-computed cases, properties, and restic itself."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom.engine.retention import (
    NS,
    UNLIMITED,
    Decision,
    GroupKey,
    Policy,
    Span,
    apply_policy,
    group_snapshots,
    plan_forget,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = 4_000_000_000 * NS  # year 2096: "now" when the test is not about now


@dataclass(frozen=True)
class Snap:
    id: str
    time_ns: int
    tags: tuple[str, ...] = ()
    client: str = "web"
    job: str = "default"
    paths: tuple[str, ...] = ("/srv",)


def ns(text: str) -> int:
    """'2021-01-04 10:00:00' (UTC) in nanoseconds."""
    moment = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(seconds=1) * NS


def at(text: str, *tags: str) -> Snap:
    return Snap(text, ns(text), tags)


def judge(snaps: Sequence[Snap], policy: Policy, now: int = FAR_FUTURE) -> Decision[Snap]:
    shuffled = list(snaps)
    random.Random(len(snaps)).shuffle(shuffled)  # input order must not matter
    return apply_policy(shuffled, policy, now)


def kept(decision: Decision[Snap]) -> list[str]:
    return [s.id for s in decision.keep]


def removed(decision: Decision[Snap]) -> list[str]:
    return [s.id for s in decision.remove]


def why(decision: Decision[Snap]) -> list[tuple[str, ...]]:
    return [r.matches for r in decision.reasons]


# --- the rules, by hand ---------------------------------------------------------------


def test_keep_last_keeps_the_newest_and_counts_down() -> None:
    snaps = [at(f"2021-01-0{d} 10:00:00") for d in range(1, 6)]
    d = judge(snaps, Policy(last=3))
    assert kept(d) == ["2021-01-05 10:00:00", "2021-01-04 10:00:00", "2021-01-03 10:00:00"]
    assert removed(d) == ["2021-01-02 10:00:00", "2021-01-01 10:00:00"]
    assert why(d) == [("last snapshot",)] * 3
    assert [dict(r.counters) for r in d.reasons] == [{"last": 2}, {"last": 1}, {}]


DAYS = [
    "2021-01-01 09:00:00",
    "2021-01-01 18:00:00",
    "2021-01-02 08:00:00",
    "2021-01-03 07:00:00",
    "2021-01-03 23:59:59",
]


def test_daily_keeps_the_newest_snapshot_of_each_day() -> None:
    d = judge([at(t) for t in DAYS], Policy(daily=2))
    assert kept(d) == ["2021-01-03 23:59:59", "2021-01-02 08:00:00"]
    assert removed(d) == ["2021-01-03 07:00:00", "2021-01-01 18:00:00", "2021-01-01 09:00:00"]


def test_the_oldest_snapshot_is_kept_while_counts_are_left() -> None:
    d = judge([at(t) for t in DAYS], Policy(daily=5))
    assert kept(d) == [
        "2021-01-03 23:59:59",
        "2021-01-02 08:00:00",
        "2021-01-01 18:00:00",
        "2021-01-01 09:00:00",
    ]
    assert why(d)[-1] == ("oldest daily snapshot",)
    assert [r.counters.get("daily") for r in d.reasons] == [4, 3, 2, 1]
    # With the counts used up by then, the oldest goes like any other.
    assert "2021-01-01 09:00:00" in removed(judge([at(t) for t in DAYS], Policy(daily=3)))


def test_unlimited_keeps_every_period_and_the_oldest() -> None:
    d = judge([at(t) for t in DAYS], Policy(daily=UNLIMITED))
    assert removed(d) == ["2021-01-03 07:00:00"]
    assert why(d)[-1] == ("oldest daily snapshot",)
    assert all(r.counters == {"daily": -1} for r in d.reasons)


def test_hourly_buckets_are_clock_hours() -> None:
    snaps = [at("2021-06-01 10:59:59"), at("2021-06-01 11:00:00"), at("2021-06-01 11:30:00")]
    assert kept(judge(snaps, Policy(hourly=1))) == ["2021-06-01 11:30:00"]
    assert kept(judge(snaps, Policy(hourly=2))) == ["2021-06-01 11:30:00", "2021-06-01 10:59:59"]


def test_weekly_buckets_are_iso_weeks_across_year_ends() -> None:
    # 2020 has an ISO week 53: Thursday 31 Dec 2020 and Sunday 3 Jan 2021 share it.
    snaps = [
        at("2020-12-27 12:00:00"),  # 2020-W52
        at("2020-12-31 12:00:00"),  # 2020-W53
        at("2021-01-03 12:00:00"),  # 2020-W53
        at("2021-01-04 12:00:00"),  # 2021-W01
    ]
    d = judge(snaps, Policy(weekly=3))
    assert kept(d) == ["2021-01-04 12:00:00", "2021-01-03 12:00:00", "2020-12-27 12:00:00"]
    assert removed(d) == ["2020-12-31 12:00:00"]
    # Monday 31 Dec 2018 is in 2019-W01, with Sunday 6 Jan 2019.
    snaps = [at("2018-12-30 12:00:00"), at("2018-12-31 12:00:00"), at("2019-01-06 12:00:00")]
    assert kept(judge(snaps, Policy(weekly=2))) == ["2019-01-06 12:00:00", "2018-12-30 12:00:00"]


def test_monthly_and_yearly_buckets_are_calendar_months_and_years() -> None:
    snaps = [
        at("2021-01-31 23:00:00"),
        at("2021-02-01 00:00:00"),
        at("2021-02-28 12:00:00"),
        at("2021-03-01 00:00:00"),
    ]
    assert kept(judge(snaps, Policy(monthly=2))) == ["2021-03-01 00:00:00", "2021-02-28 12:00:00"]
    snaps = [at("2019-12-31 23:59:59"), at("2020-01-01 00:00:00"), at("2020-06-01 00:00:00")]
    assert kept(judge(snaps, Policy(yearly=1))) == ["2020-06-01 00:00:00"]
    assert kept(judge(snaps, Policy(yearly=2))) == ["2020-06-01 00:00:00", "2019-12-31 23:59:59"]


def test_rules_combine_and_every_matching_rule_is_a_reason() -> None:
    snaps = [at("2021-01-04 12:00:00"), at("2021-01-03 12:00:00"), at("2020-12-20 12:00:00")]
    d = judge(snaps, Policy(last=1, daily=2, weekly=2))
    assert why(d) == [
        ("last snapshot", "daily snapshot", "weekly snapshot"),
        ("daily snapshot", "weekly snapshot"),
    ]
    assert [dict(r.counters) for r in d.reasons] == [{"daily": 1, "weekly": 1}, {}]
    assert removed(d) == ["2020-12-20 12:00:00"]


def test_within_counts_back_from_the_newest_with_calendar_months() -> None:
    # 31 March minus a month is "31 February", which Go (and restic) roll to 3 March.
    snaps = [
        at("2021-03-31 12:00:00"),
        at("2021-03-03 12:00:01"),
        at("2021-03-03 12:00:00"),
        at("2021-02-28 12:00:00"),
    ]
    d = judge(snaps, Policy(within=Span(months=1)))
    assert kept(d) == ["2021-03-31 12:00:00", "2021-03-03 12:00:01"]
    assert why(d) == [("within 1m",)] * 2
    # In a leap year it rolls to 2 March.
    assert Span(months=1).before(ns("2020-03-31 12:00:00")) == ns("2020-03-02 12:00:00")
    assert Span(years=1).before(ns("2020-02-29 00:00:00")) == ns("2019-03-01 00:00:00")
    assert Span(days=2, hours=3, seconds=4).before(ns("2021-01-03 05:00:00")) == ns(
        "2021-01-01 01:59:56"
    )
    assert Span(years=5000).before(ns("2021-01-01 00:00:00")) is None


def test_within_ignores_snapshots_dated_in_the_future() -> None:
    snaps = [at("2021-01-01 00:00:00"), at("2021-01-05 00:00:00"), at("2021-02-01 00:00:00")]
    d = judge(snaps, Policy(within=Span(days=3)), now=ns("2021-01-10 00:00:00"))
    assert kept(d) == ["2021-02-01 00:00:00", "2021-01-05 00:00:00"]
    # Nothing before now: every snapshot is within.
    d = judge(snaps, Policy(within=Span(days=3)), now=ns("2020-01-01 00:00:00"))
    assert removed(d) == []


def test_keep_tag_needs_every_tag_of_one_list() -> None:
    snaps = [
        at("2021-01-05 00:00:00", "a"),
        at("2021-01-04 00:00:00", "a", "b"),
        at("2021-01-03 00:00:00"),
        at("2021-01-02 00:00:00", "b", "c"),
    ]
    d = judge(snaps, Policy(tags=(("a", "b"), ("c",))))
    assert kept(d) == ["2021-01-04 00:00:00", "2021-01-02 00:00:00"]
    assert why(d) == [("has tags [a, b]",), ("has tags [c]",)]
    d = judge(snaps, Policy(last=1, tags=(("",),)))  # "" matches snapshots without tags
    assert kept(d) == ["2021-01-05 00:00:00", "2021-01-03 00:00:00"]
    assert why(d) == [("last snapshot",), ("has tags []",)]


def test_an_empty_policy_keeps_everything() -> None:
    snaps = [at(t) for t in DAYS]
    d = judge(snaps, Policy(within=Span()))
    assert removed(d) == [] and len(kept(d)) == 5
    assert why(d) == [("policy is empty",)] * 5
    assert Policy().empty and Policy(daily=0, within=Span()).empty
    assert not Policy(daily=UNLIMITED).empty and not Policy(tags=(("x",),)).empty


def test_equal_times_are_ordered_by_id() -> None:
    t = ns("2021-01-01 00:00:00")
    d = apply_policy([Snap("b", t), Snap("a", t), Snap("c", t)], Policy(last=2), FAR_FUTURE)
    assert kept(d) == ["a", "b"]


def test_policy_descriptions_read_like_restics() -> None:
    assert Policy(daily=7, weekly=4).describe() == "keep 7 daily, 4 weekly snapshots"
    assert Policy(last=UNLIMITED).describe() == "keep all latest snapshots"
    assert (
        Policy(yearly=1, tags=(("a", "b"), ("c",)), within=Span(days=2)).describe()
        == "keep 1 yearly snapshots and all snapshots with tags [[a, b] [c]] "
        "and all snapshots within 2d of the newest"
    )
    with pytest.raises(ValueError):
        Policy(daily=-2)


@pytest.mark.parametrize(
    ("text", "span", "spelled"),
    [
        ("1y5m7d2h", Span(years=1, months=5, days=7, hours=2), "1y5m7d2h"),
        (" 48h ", Span(hours=48), "48h"),
        ("2d1d", Span(days=1), "1d"),  # restic: the last value of a unit wins
        ("0y3d", Span(days=3), "3d"),
    ],
)
def test_spans_parse_restics_syntax(text: str, span: Span, spelled: str) -> None:
    assert Span.parse(text) == span
    assert str(span) == spelled


@pytest.mark.parametrize("text", ["", "5", "d", "-1d", "1w", "1.5d", "1d 2h", "1M"])
def test_malformed_spans_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        Span.parse(text)


def test_spans_from_seconds_are_days_hours_and_seconds() -> None:
    span = Span.from_seconds(7 * 86_400 + 3_600 + 5)
    assert span == Span(days=7, hours=1, seconds=5)
    assert str(span) == "7d1h5s"


def test_groups_are_client_and_job_each_with_its_own_policy() -> None:
    snaps = [
        Snap("w1", ns("2021-01-01 00:00:00"), client="web"),
        Snap("w2", ns("2021-01-02 00:00:00"), client="web"),
        Snap("s1", ns("2021-01-01 00:00:00"), client="web", job="sql"),
        Snap("s2", ns("2021-01-02 00:00:00"), client="web", job="sql"),
        Snap("d1", ns("2021-01-01 00:00:00"), client="db"),
    ]
    policies = {("web", "default"): Policy(last=1), ("web", "sql"): Policy(last=2)}
    plan = plan_forget(snaps, lambda k: policies.get((k.client, k.job)), FAR_FUTURE)
    assert [(g.key.client, g.key.job) for g in plan] == [
        ("db", "default"),
        ("web", "default"),
        ("web", "sql"),
    ]
    db, web, sql = plan
    assert db.policy is None and [r.matches for r in db.reasons] == [("no policy",)]
    assert [s.id for s in web.keep] == ["w2"] and [s.id for s in web.remove] == ["w1"]
    assert [s.id for s in sql.keep] == ["s2", "s1"] and sql.remove == []


# --- properties -------------------------------------------------------------------------

# Whole seconds from 2014 to 2026, so periods, ISO weeks and leap years all occur; and
# clusters around the ISO week 2020-W53 (28 Dec to 3 Jan), so that periods are shared.
TIMES = st.integers(min_value=1_390_000_000, max_value=1_780_000_000)
WEEK_53 = 1_608_422_400  # 2020-12-20 00:00 UTC
CLUSTERED = st.one_of(
    TIMES,
    st.builds(
        lambda d, h, s: WEEK_53 + d * 86_400 + h * 3_600 + s,
        st.integers(0, 30),
        st.integers(0, 23),
        st.integers(0, 7),
    ),
)


@st.composite
def snapshot_lists(draw: st.DrawFn) -> list[Snap]:
    seconds = draw(st.lists(CLUSTERED, min_size=0, max_size=40, unique=True))
    tag_sets = st.lists(st.sampled_from(["a", "b"]), unique=True, max_size=2).map(tuple)
    return [Snap(f"s{i:03d}", t * NS, draw(tag_sets)) for i, t in enumerate(seconds)]


COUNT = st.one_of(st.just(0), st.just(UNLIMITED), st.integers(1, 8))
policies = st.builds(
    Policy,
    last=COUNT,
    hourly=COUNT,
    daily=COUNT,
    weekly=COUNT,
    monthly=COUNT,
    yearly=COUNT,
    within=st.one_of(st.none(), st.builds(Span, days=st.integers(0, 40), hours=st.integers(0, 30))),
    tags=st.lists(st.sampled_from([("a",), ("a", "b"), ("b",)]), max_size=2).map(tuple),
)
# Keys for each period written independently of the implementation: strftime.
PERIOD_FORMATS = {
    "hourly": "%Y%m%d%H",
    "daily": "%Y%m%d",
    "weekly": "%G%V",
    "monthly": "%Y%m",
    "yearly": "%Y",
}


def newest_first(snaps: Sequence[Snap]) -> list[Snap]:
    return sorted(snaps, key=lambda s: -s.time_ns)


@settings(max_examples=300)
@given(snapshot_lists(), policies)
def test_every_snapshot_is_either_kept_with_a_reason_or_removed(
    snaps: list[Snap], policy: Policy
) -> None:
    d = apply_policy(snaps, policy, FAR_FUTURE)
    assert sorted(kept(d) + removed(d)) == sorted(s.id for s in snaps)
    assert [r.snapshot for r in d.reasons] == d.keep
    assert all(r.matches for r in d.reasons)
    assert d.keep == newest_first(d.keep) and d.remove == newest_first(d.remove)
    assert apply_policy(list(reversed(snaps)), policy, FAR_FUTURE) == d


@settings(max_examples=200)
@given(snapshot_lists(), st.integers(1, 50))
def test_keep_last_n_keeps_exactly_the_n_newest(snaps: list[Snap], n: int) -> None:
    d = apply_policy(snaps, Policy(last=n), FAR_FUTURE)
    assert d.keep == newest_first(snaps)[:n]


@settings(max_examples=300)
@given(snapshot_lists(), st.sampled_from(sorted(PERIOD_FORMATS)), COUNT.filter(bool))
def test_a_period_count_keeps_the_newest_of_the_newest_periods(
    snaps: list[Snap], period: str, count: int
) -> None:
    """Reference: the newest snapshot of each of the ``count`` newest periods, and the
    oldest snapshot when there are fewer periods than ``count``."""
    fmt = PERIOD_FORMATS[period]
    newest_of: dict[str, Snap] = {}
    for snap in newest_first(snaps):
        key = datetime.fromtimestamp(snap.time_ns // NS, UTC).strftime(fmt)
        newest_of.setdefault(key, snap)
    limit = len(newest_of) + 1 if count == UNLIMITED else count
    expected = {s.id for s in list(newest_of.values())[:limit]}
    if snaps and len(newest_of) < limit:
        expected.add(newest_first(snaps)[-1].id)
    d = apply_policy(snaps, Policy(**{period: count}), FAR_FUTURE)
    assert set(kept(d)) == expected


@settings(max_examples=200)
@given(snapshot_lists(), policies, st.sampled_from(["last", *sorted(PERIOD_FORMATS)]))
def test_more_is_never_less_and_unlimited_is_as_many_as_there_are(
    snaps: list[Snap], policy: Policy, name: str
) -> None:
    before = set(kept(apply_policy(snaps, policy, FAR_FUTURE)))
    current = getattr(policy, name)
    if current != UNLIMITED and not policy.empty:  # an empty policy keeps everything
        more = apply_policy(snaps, replace(policy, **{name: current + 1}), FAR_FUTURE)
        assert before <= set(kept(more))
    unlimited = replace(policy, **{name: UNLIMITED})
    as_many = replace(policy, **{name: len(snaps) + 1})
    assert kept(apply_policy(snaps, unlimited, FAR_FUTURE)) == kept(
        apply_policy(snaps, as_many, FAR_FUTURE)
    )


@settings(max_examples=200)
@given(snapshot_lists(), st.integers(0, 90 * 86_400), st.integers(1_500_000_000, 1_800_000_000))
def test_within_keeps_exactly_what_is_newer_than_the_span_before_the_newest(
    snaps: list[Snap], seconds: int, now_s: int
) -> None:
    span = Span.from_seconds(seconds)
    d = apply_policy(snaps, Policy(within=span, tags=(("a", "b"),)), now_s * NS)
    past = [s.time_ns for s in snaps if s.time_ns < now_s * NS]
    for snap in snaps:
        tagged = {"a", "b"} <= set(snap.tags)
        recent = not past or snap.time_ns > max(past) - seconds * NS
        assert (snap.id in kept(d)) == (tagged or (seconds > 0 and recent)), snap


# --- against restic itself ---------------------------------------------------------------

RESTIC_PASSWORD = "retention-test"
RESTIC_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class ResticRepo:
    path: Path
    env: dict[str, str]
    version: tuple[int, int, int]
    snapshots: list[Snap]  # as restic lists them, its hosts as clients

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["restic", "--no-cache", *args],
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert done.returncode == 0, f"restic {' '.join(args)}: {done.stderr}"
        return done.stdout


def _schedules() -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Irregular backup times per host, over years, with period edges placed on purpose."""
    rng = random.Random(20240229)

    def tags() -> tuple[str, ...]:
        return rng.choice([(), (), (), (), (), ("keep",), ("a", "b"), ("a",)])

    def stamp(t: datetime) -> str:
        return t.strftime(RESTIC_TIME)

    # "nightly": most nights around 01:00 for 15 months, with gaps and double runs.
    nightly: set[str] = set()
    day = datetime(2019, 11, 20, tzinfo=UTC)
    while day < datetime(2021, 2, 20, tzinfo=UTC):
        if rng.random() < 0.6:
            nightly.add(stamp(day + timedelta(hours=1, seconds=rng.randrange(0, 3600))))
        if rng.random() < 0.08:
            nightly.add(stamp(day + timedelta(hours=rng.randrange(2, 24), minutes=7)))
        day += timedelta(days=rng.randrange(1, 8))
    nightly |= {  # ISO 2020-W53, year, month and day edges
        "2020-12-27 23:59:59",
        "2020-12-28 00:00:00",
        "2020-12-31 23:59:59",
        "2021-01-01 00:00:00",
        "2021-01-03 23:59:59",
        "2021-01-04 00:00:00",
        "2020-02-29 12:00:00",
        "2020-03-31 23:00:00",
        "2020-04-01 00:30:00",
    }
    # "sparse": a few a year from 2014 to 2024 (ISO years 2015 and 2020 have 53 weeks).
    sparse = {
        "2014-12-29 10:00:00",
        "2015-12-31 10:00:00",
        "2016-01-03 10:00:00",
        "2016-01-04 10:00:00",
        "2016-02-29 10:00:00",
        "2018-12-31 10:00:00",
        "2019-01-06 10:00:00",
        "2024-02-29 23:59:59",
    }
    while len(sparse) < 40:
        moment = datetime(2014, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(0, 11 * 365 * 86_400)
        )
        sparse.add(stamp(moment))
    # "burst": many in a few hours over a month's end.
    burst = {
        stamp(datetime(2022, 3, 31, 20, tzinfo=UTC) + timedelta(minutes=rng.randrange(0, 8 * 60)))
        for _ in range(24)
    }
    return {
        host: [(t, tags()) for t in sorted(times)]
        for host, times in (("nightly", nightly), ("sparse", sparse), ("burst", burst))
    }


def _restic_mac(key: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    """restic's Poly1305-AES: r from the MAC key's second half, s = AES_k(nonce)."""
    encryptor = Cipher(algorithms.AES(key[32:48]), modes.ECB()).encryptor()
    s = encryptor.update(nonce) + encryptor.finalize()
    return Poly1305.generate_tag(key[48:64] + s, ciphertext)


def _cheapen_restic_key(repo: Path) -> None:
    """Re-seal the master key under cheap scrypt parameters: restic tunes its KDF to half
    a second per command, and this fixture runs some two hundred commands."""
    (key_path,) = (repo / "keys").iterdir()
    doc = json.loads(key_path.read_bytes())
    password = RESTIC_PASSWORD.encode()
    salt = base64.b64decode(doc["salt"])
    old = hashlib.scrypt(
        password, salt=salt, n=doc["N"], r=doc["r"], p=doc["p"], maxmem=1 << 28, dklen=64
    )
    sealed = base64.b64decode(doc["data"])
    nonce, ciphertext, tag = sealed[:16], sealed[16:-16], sealed[-16:]
    assert _restic_mac(old, nonce, ciphertext) == tag, "restic's key format has changed"
    decryptor = Cipher(algorithms.AES(old[:32]), modes.CTR(nonce)).decryptor()
    master = decryptor.update(ciphertext) + decryptor.finalize()
    salt, nonce = os.urandom(64), os.urandom(16)
    new = hashlib.scrypt(password, salt=salt, n=1024, r=8, p=1, dklen=64)
    encryptor = Cipher(algorithms.AES(new[:32]), modes.CTR(nonce)).encryptor()
    ciphertext = encryptor.update(master) + encryptor.finalize()
    sealed = nonce + ciphertext + _restic_mac(new, nonce, ciphertext)
    doc.update(
        N=1024,
        r=8,
        p=1,
        salt=base64.b64encode(salt).decode(),
        data=base64.b64encode(sealed).decode(),
    )
    raw = json.dumps(doc).encode()
    (repo / "keys" / hashlib.sha256(raw).hexdigest()).write_bytes(raw)
    key_path.unlink()


def _restic_version(env: dict[str, str]) -> tuple[int, int, int]:
    out = subprocess.run(["restic", "version"], env=env, capture_output=True, text=True).stdout
    match = re.search(r"restic (\d+)\.(\d+)\.(\d+)", out)
    assert match, f"cannot read restic's version from {out!r}"
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@pytest.fixture(scope="module")
def restic_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResticRepo]:
    """One restic repository with ~130 snapshots of three hosts, shared by the cases."""
    if shutil.which("restic") is None:
        if os.environ.get("CI"):
            pytest.fail("restic is not installed: the retention rules cannot be checked")
        pytest.skip("restic is not installed")
    base = tmp_path_factory.mktemp("restic")
    data = base / "data"
    data.mkdir()
    (data / "file").write_text("retention\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(base),
        "TZ": "UTC",
        "RESTIC_PASSWORD": RESTIC_PASSWORD,
        "RESTIC_REPOSITORY": str(base / "repo"),
    }
    repo = ResticRepo(base / "repo", env, _restic_version(env), [])
    repo.run("init")
    _cheapen_restic_key(repo.path)

    def backup(host: str, when: str, tags: tuple[str, ...], *lock: str) -> None:
        tag_args = [arg for tag in tags for arg in ("--tag", tag)]
        repo.run(*lock, "backup", "--quiet", "--host", host, "--time", when, *tag_args, str(data))

    schedules = _schedules()
    jobs = [(h, t, tags) for h, times in schedules.items() for t, tags in times]
    # Each locked restic command waits 200 ms after taking its lock, and restic 0.14
    # stalls for ~40 s when another's lock vanishes as it reads it: where restic lets
    # backups skip the lock (nothing here removes data), run several at once unlocked.
    try:
        backup(*jobs[0], "--no-lock")
    except AssertionError:
        for job in jobs:
            backup(*job)
    else:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda job: backup(*job, "--no-lock"), jobs[1:]))
    repo.run("check")

    listed = json.loads(repo.run("snapshots", "--no-lock", "--json"))
    snaps = [
        Snap(
            s["id"],
            (datetime.fromisoformat(s["time"]) - EPOCH) // timedelta(seconds=1) * NS,
            tuple(s.get("tags") or ()),
            client=s["hostname"],
        )
        for s in listed
    ]
    assert sorted((s.client, _restic_stamp(s)) for s in snaps) == sorted(
        (h, t) for h, t, _ in jobs
    ), "restic did not record the times given"
    yield ResticRepo(repo.path, env, repo.version, snaps)


def _restic_stamp(snap: Snap) -> str:
    return datetime.fromtimestamp(snap.time_ns // NS, UTC).strftime(RESTIC_TIME)


CASES: list[tuple[list[str], Policy]] = [
    (["--keep-last", "1"], Policy(last=1)),
    (["--keep-last", "7"], Policy(last=7)),
    (["--keep-hourly", "5"], Policy(hourly=5)),
    (["--keep-hourly", "30"], Policy(hourly=30)),
    (["--keep-daily", "7"], Policy(daily=7)),
    (["--keep-daily", "45"], Policy(daily=45)),
    (["--keep-weekly", "5"], Policy(weekly=5)),
    (["--keep-weekly", "70"], Policy(weekly=70)),
    (["--keep-monthly", "6"], Policy(monthly=6)),
    (["--keep-monthly", "30"], Policy(monthly=30)),
    (["--keep-yearly", "2"], Policy(yearly=2)),
    (["--keep-yearly", "15"], Policy(yearly=15)),
    (["--keep-within", "2d"], Policy(within=Span(days=2))),
    (["--keep-within", "36h"], Policy(within=Span(hours=36))),
    (["--keep-within", "1m"], Policy(within=Span(months=1))),
    (["--keep-within", "1y2m3d4h"], Policy(within=Span(years=1, months=2, days=3, hours=4))),
    (["--keep-within", "3y"], Policy(within=Span(years=3))),
    (
        ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12", "--keep-yearly", "3"],
        Policy(daily=7, weekly=4, monthly=12, yearly=3),
    ),
    (
        ["--keep-last", "3", "--keep-hourly", "6", "--keep-daily", "5", "--keep-within", "10d"],
        Policy(last=3, hourly=6, daily=5, within=Span(days=10)),
    ),
    (["--keep-tag", "keep", "--keep-daily", "3"], Policy(daily=3, tags=(("keep",),))),
    (
        ["--keep-tag", "a,b", "--keep-tag", "keep", "--keep-weekly", "2", "--keep-within", "1m"],
        Policy(weekly=2, within=Span(months=1), tags=(("a", "b"), ("keep",))),
    ),
    (
        ["--keep-tag", "a", "--keep-monthly", "3", "--keep-yearly", "10"],
        Policy(monthly=3, yearly=10, tags=(("a",),)),
    ),
    (["--keep-within-hourly", "1d"], Policy(within_hourly=Span(days=1))),
    (["--keep-within-daily", "10d"], Policy(within_daily=Span(days=10))),
    (["--keep-within-weekly", "2m"], Policy(within_weekly=Span(months=2))),
    (["--keep-within-monthly", "1y"], Policy(within_monthly=Span(years=1))),
    (["--keep-within-yearly", "5y"], Policy(within_yearly=Span(years=5))),
    (
        [
            *("--keep-last", "2", "--keep-within-daily", "7d", "--keep-within-weekly", "1m"),
            *("--keep-tag", "keep", "--keep-within", "36h"),
        ],
        Policy(
            last=2,
            within=Span(hours=36),
            tags=(("keep",),),
            within_daily=Span(days=7),
            within_weekly=Span(months=1),
        ),
    ),
]


def _as_restic_would(
    decision: Decision[Snap], version: tuple[int, int, int]
) -> tuple[list[str], list[tuple[list[str], dict[str, int]]]]:
    """Our decision as this restic would print it: restic before 0.16 did not keep the
    oldest snapshot for counts left over, and none but the newest says "oldest"."""
    keep = [s.id for s in decision.keep]
    reasons = []
    for reason in decision.reasons:
        matches = list(reason.matches)
        counters = dict(reason.counters)
        oldest_rules = [m for m in matches if m.startswith("oldest ")]
        if version < (0, 16, 0):
            for match in oldest_rules:
                name = match.split()[1]
                counters[name] = counters.get(name, 0) + 1
            matches = [m for m in matches if not m.startswith("oldest ")]
            if not matches:
                keep.remove(reason.snapshot.id)
                continue
        reasons.append(([m.removeprefix("oldest ") for m in matches], counters))
    return keep, reasons


@pytest.mark.parametrize(("args", "policy"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_retention_matches_restic(restic_repo: ResticRepo, args: list[str], policy: Policy) -> None:
    out = restic_repo.run("forget", "--no-lock", "--dry-run", "--json", "--group-by", "host", *args)
    groups = {g["host"]: g for g in json.loads(out)}
    plan = plan_forget(restic_repo.snapshots, lambda k: policy, FAR_FUTURE)
    assert sorted(groups) == [g.key.client for g in plan] == ["burst", "nightly", "sparse"]
    by_id = {s.id: s for s in restic_repo.snapshots}
    for group in plan:
        theirs = groups[group.key.client]
        decision = Decision(group.keep, group.remove, group.reasons)
        keep, reasons = _as_restic_would(decision, restic_repo.version)
        assert [_restic_stamp(by_id[i]) for i in keep] == [
            _restic_stamp(by_id[s["id"]]) for s in theirs["keep"] or []
        ], f"{group.key.client}: kept times differ"
        everything = {s.id for s in group.keep + group.remove}
        assert sorted(everything - set(keep)) == sorted(s["id"] for s in theirs["remove"] or []), (
            f"{group.key.client}: removed snapshots differ"
        )
        their_reasons = [
            ([m.removeprefix("oldest ") for m in r["matches"]], r["counters"])
            for r in theirs["reasons"] or []
        ]
        assert reasons == their_reasons, f"{group.key.client}: reasons differ"


GROUPING_CASES: list[tuple[list[str], Policy]] = [
    (["--keep-last", "2"], Policy(last=2)),
    (["--keep-daily", "5", "--keep-monthly", "3"], Policy(daily=5, monthly=3)),
]


@pytest.mark.parametrize(("args", "policy"), GROUPING_CASES, ids=lambda c: str(c))
def test_grouping_by_client_and_tags_matches_restics_host_and_tags(
    restic_repo: ResticRepo, args: list[str], policy: Policy
) -> None:
    """``forget --group-by client,tags`` makes restic's ``--group-by host,tags`` groups
    (a snapshot's tags, in any order, are its key) and judges each the same way."""
    out = restic_repo.run(
        "forget", "--no-lock", "--dry-run", "--json", "--group-by", "host,tags", *args
    )
    theirs = {(g["host"], tuple(sorted(g["tags"] or ()))): g for g in json.loads(out)}
    plan = plan_forget(restic_repo.snapshots, lambda k: policy, FAR_FUTURE, ("client", "tags"))
    ours = [(g.key.client, g.key.tags) for g in plan]
    assert sorted(theirs) == sorted(ours) and len(ours) > 3
    assert all(g.key.job is None and g.key.paths is None for g in plan)
    for group in plan:
        them = theirs[group.key.client, group.key.tags]
        keep, _ = _as_restic_would(
            Decision(group.keep, group.remove, group.reasons), restic_repo.version
        )
        everything = {s.id for s in group.keep + group.remove}
        assert sorted(everything - set(keep)) == sorted(s["id"] for s in them["remove"] or [])
        assert sorted(keep) == sorted(s["id"] for s in them["keep"] or [])


def test_group_keys_sort_paths_and_tags_and_none_means_one_group() -> None:
    snaps = [
        Snap("a", ns("2021-01-01 00:00:00"), ("x", "y"), paths=("/srv", "/etc")),
        Snap("b", ns("2021-01-02 00:00:00"), ("y", "x"), paths=("/etc", "/srv")),
        Snap("c", ns("2021-01-03 00:00:00"), ("x",), client="db", paths=("/etc", "/srv")),
    ]
    by_paths = group_snapshots(snaps, ("paths",))
    assert [(k.paths, [s.id for s in m]) for k, m in by_paths] == [
        (("/etc", "/srv"), ["a", "b", "c"])
    ]
    by_tags = group_snapshots(snaps, ("tags",))
    assert [(k.tags, sorted(s.id for s in m)) for k, m in by_tags] == [
        (("x",), ["c"]),
        (("x", "y"), ["a", "b"]),
    ]
    ((key, members),) = group_snapshots(snaps, ())
    assert key == GroupKey() and key.describe() == "all snapshots" and len(members) == 3
    assert GroupKey.of(snaps[2], ("client", "tags")).describe() == "client db, tags x"
    with pytest.raises(ValueError, match="cannot group by host"):
        group_snapshots(snaps, ("host",))


def test_the_restic_cases_exercise_every_rule(restic_repo: ResticRepo) -> None:
    """The comparison above is only as good as its cases: each rule must keep something
    and remove something in them, and the oldest-snapshot rule must come up."""
    seen: set[str] = set()
    removing = 0
    for _, policy in CASES:
        for group in plan_forget(restic_repo.snapshots, lambda k, p=policy: p, FAR_FUTURE):
            seen.update(m.split(" [")[0] for r in group.reasons for m in r.matches)
            removing += bool(group.remove)
    assert {
        "last snapshot",
        "hourly snapshot",
        "daily snapshot",
        "weekly snapshot",
        "monthly snapshot",
        "yearly snapshot",
        "has tags",
        "oldest daily snapshot",
        "oldest yearly snapshot",
    } <= seen, seen
    assert {m for m in seen if m.startswith("within ")} >= {"within 2d", "within 1m", "within 3y"}
    assert {
        "hourly within 1d",
        "daily within 10d",
        "weekly within 2m",
        "monthly within 1y",
        "yearly within 5y",
    } <= seen, seen
    assert removing >= 2 * len(CASES)


def test_a_config_retention_gives_the_within_period_spans() -> None:
    from strongroom.config.jobs import Retention
    from strongroom.jobs.aftercare import policy_from_retention

    retention = Retention.model_validate({"daily": 3, "within_daily": "7d", "within_yearly": "2d"})
    policy = policy_from_retention(retention)

    assert policy.within_daily == Span(days=7)
    assert policy.within_yearly == Span(days=2)
    assert policy.within_periods() == [("daily", Span(days=7)), ("yearly", Span(days=2))]
    assert policy.describe() == (
        "keep 3 daily snapshots and the newest of each day within 7d"
        " and the newest of each year within 2d"
    )
    assert not Policy(within_weekly=Span(hours=1)).empty
    assert Policy(within_weekly=Span()).empty
