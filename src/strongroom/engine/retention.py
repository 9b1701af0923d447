"""Retention: which snapshots a policy keeps, and why, by restic's `forget` rules.

A pure function of the snapshots, a policy and the current time (docs/retention.md).
Within each group, snapshots are walked newest first. A snapshot is kept when a tag
list matches it, when it is within ``within`` of the newest snapshot, or when it is the
newest of a new period (hour, day, ISO week, month, year; or simply the next one for
``last``) while that period's counter is above zero (or unlimited, -1); the oldest
snapshot is also kept by every counter not yet used up when it is reached. Periods
are computed in UTC; plan_forget groups snapshots by client and job (or by the fields
``--group-by`` names: client, job, paths, tags).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Generic, Protocol, TypeVar

UNLIMITED = -1
NS = 1_000_000_000
DAY_NS = 86_400 * NS

# Reasons that are not a rule of the policy.
EMPTY_POLICY = "policy is empty"
NO_POLICY = "no policy"


class Dated(Protocol):
    """What retention needs to know of a snapshot."""

    @property
    def id(self) -> str: ...

    @property
    def time_ns(self) -> int: ...

    @property
    def tags(self) -> Sequence[str]: ...


class Grouped(Dated, Protocol):
    """A snapshot that also names its group: its client, job and backed-up paths."""

    @property
    def client(self) -> str: ...

    @property
    def job(self) -> str: ...

    @property
    def paths(self) -> Sequence[str]: ...


S = TypeVar("S", bound=Dated)
G = TypeVar("G", bound=Grouped)

_SPAN_PART = re.compile(r"(\d+)([ymdh])")
_SPAN = re.compile(r"(?:\d+[ymdh])+")


@dataclass(frozen=True)
class Span:
    """restic's duration for ``--keep-within``: calendar years, months and days, then
    hours (and seconds, for spans a config gives in seconds).

    It is counted back from a time as Go's ``AddDate`` does: the day of the month is
    kept and overflow rolls over, so 31 March minus one month is 3 March.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0
    seconds: int = 0

    def __post_init__(self) -> None:
        if min(self.years, self.months, self.days, self.hours, self.seconds) < 0:
            raise ValueError("a retention span cannot be negative")

    @classmethod
    def parse(cls, text: str) -> Span:
        """restic's syntax: numbers with units y, m (months), d, h, as in ``1y5m7d2h``.

        A unit given twice takes the last value, as in restic. Raises ValueError with a
        message fit for a user.
        """
        compact = text.strip()
        if not _SPAN.fullmatch(compact):
            raise ValueError(
                f"invalid duration {text!r}: use numbers with y (years), m (months), "
                "d (days) and h (hours), like 1y5m7d2h"
            )
        parts = {unit: int(number) for number, unit in _SPAN_PART.findall(compact)}
        return cls(
            years=parts.get("y", 0),
            months=parts.get("m", 0),
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
        )

    @classmethod
    def from_seconds(cls, seconds: int) -> Span:
        """A span of whole days, hours and seconds (a day is 86,400 s in UTC)."""
        days, rest = divmod(seconds, 86_400)
        hours, rest = divmod(rest, 3_600)
        return cls(days=days, hours=hours, seconds=rest)

    @property
    def zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours or self.seconds)

    def __str__(self) -> str:
        # restic's spelling (its reasons read "within 1y2m"); seconds are ours.
        units = (
            (self.years, "y"),
            (self.months, "m"),
            (self.days, "d"),
            (self.hours, "h"),
            (self.seconds, "s"),
        )
        return "".join(f"{n}{unit}" for n, unit in units if n)

    def before(self, time_ns: int) -> int | None:
        """``time_ns`` counted back by this span, or None when that lies before year 1
        (then every snapshot is within it)."""
        secs = time_ns // NS
        moment = datetime.fromtimestamp(secs, UTC)
        months = moment.month - 1 - self.months
        try:
            day = date(moment.year - self.years + months // 12, months % 12 + 1, 1)
            day += timedelta(days=moment.day - 1 - self.days)
        except (ValueError, OverflowError):
            return None
        shift_ns = (day - moment.date()).days * DAY_NS
        return time_ns + shift_ns - (self.hours * 3_600 + self.seconds) * NS


@dataclass(frozen=True)
class Policy:
    """How many snapshots to keep per period (``UNLIMITED`` for all), a span within
    which all are kept, and tag lists whose snapshots are all kept (every tag of one
    list must be present; the tag "" matches snapshots without tags)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Span | None = None
    tags: tuple[tuple[str, ...], ...] = ()
    # restic's --keep-within-hourly ...: the newest snapshot of each period, for the
    # periods within the span before the newest snapshot.
    within_hourly: Span | None = None
    within_daily: Span | None = None
    within_weekly: Span | None = None
    within_monthly: Span | None = None
    within_yearly: Span | None = None

    def __post_init__(self) -> None:
        for name, count in self.counts():
            if count < UNLIMITED:
                raise ValueError(f"keep {name}: {count} is not a count (use -1 for unlimited)")

    def counts(self) -> list[tuple[str, int]]:
        return [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]

    def within_periods(self) -> list[tuple[str, Span]]:
        """The --keep-within-<period> spans given (not zero), in restic's order."""
        spans = [(name, getattr(self, f"within_{name}")) for name, _ in WITHIN_PERIODS]
        return [(name, span) for name, span in spans if span is not None and not span.zero]

    @property
    def empty(self) -> bool:
        """Keeps nothing by rule: no counts, no span, no tags."""
        no_span = (self.within is None or self.within.zero) and not self.within_periods()
        return no_span and not self.tags and all(count == 0 for _, count in self.counts())

    def describe(self) -> str:
        """In restic's words: "keep 7 daily, 4 weekly snapshots and all snapshots ..."."""
        if self.empty:
            return "keep everything (the policy is empty)"
        keeps = []
        for name, count in self.counts():
            what = "latest" if name == "last" else name
            if count > 0:
                keeps.append(f"{count} {what}")
            elif count == UNLIMITED:
                keeps.append(f"all {what}")
        text = f"{', '.join(keeps)} snapshots" if keeps else ""
        if self.tags:
            lists = " ".join(_tag_list(tags) for tags in self.tags)
            text += (" and " if text else "") + f"all snapshots with tags [{lists}]"
        if self.within is not None and not self.within.zero:
            text += (" and " if text else "") + f"all snapshots within {self.within} of the newest"
        for name, span in self.within_periods():
            unit = _PERIOD_UNITS[name]
            text += (" and " if text else "") + f"the newest of each {unit} within {span}"
        return f"keep {text}"


@dataclass(frozen=True)
class KeepReason(Generic[S]):
    """Why a snapshot is kept (restic's ``matches``), and each counter's value after
    it was judged (restic's ``counters``: those that are zero are left out)."""

    snapshot: S
    matches: tuple[str, ...]
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision(Generic[S]):
    """Snapshots to keep and to remove, each newest first; ``reasons`` parallels ``keep``."""

    keep: list[S]
    remove: list[S]
    reasons: list[KeepReason[S]]


# What snapshots can be grouped by (``forget --group-by``); "host" is restic's name for
# the client.
GROUP_FIELDS = ("client", "job", "paths", "tags")
BY_JOB = ("client", "job")


@dataclass(frozen=True)
class GroupKey:
    """What the snapshots of a group share: a field is None when not grouped by it.
    Paths and tags are sorted (restic's group keys are too), so the order a backup
    named them in does not split a group."""

    client: str | None = None
    job: str | None = None
    paths: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None

    @classmethod
    def of(cls, snap: Grouped, by: Sequence[str] = BY_JOB) -> GroupKey:
        return cls(
            snap.client if "client" in by else None,
            snap.job if "job" in by else None,
            tuple(sorted(snap.paths)) if "paths" in by else None,
            tuple(sorted(set(snap.tags))) if "tags" in by else None,
        )

    def describe(self) -> str:
        parts = []
        if self.client is not None:
            parts.append(f"client {self.client}")
        if self.job is not None:
            parts.append(f"job {self.job}")
        if self.paths is not None:
            parts.append(f"paths {', '.join(self.paths) or '(none)'}")
        if self.tags is not None:
            parts.append(f"tags {','.join(self.tags) or '(none)'}")
        return ", ".join(parts) or "all snapshots"

    def _sort_key(self) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
        return (self.client or "", self.job or "", self.paths or (), self.tags or ())


@dataclass(frozen=True)
class GroupDecision(Generic[G]):
    """The decision for one group (by default one client's job). ``policy`` is None
    when none applies to it (then everything is kept, with the reason "no policy")."""

    key: GroupKey
    policy: Policy | None
    keep: list[G]
    remove: list[G]
    reasons: list[KeepReason[G]]


def _hour(t: datetime) -> int:
    return t.year * 1_000_000 + t.month * 10_000 + t.day * 100 + t.hour


def _day(t: datetime) -> int:
    return t.year * 10_000 + t.month * 100 + t.day


def _week(t: datetime) -> int:
    year, week, _ = t.isocalendar()
    return year * 100 + week


def _month(t: datetime) -> int:
    return t.year * 100 + t.month


def _year(t: datetime) -> int:
    return t.year


# The periods of the counted rules, in restic's order; "last" counts snapshots.
_PERIODS: tuple[tuple[str, Callable[[datetime], int] | None], ...] = (
    ("last", None),
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
    ("yearly", _year),
)


_PERIOD_OF = {name: period for name, period in _PERIODS if period is not None}
# The --keep-within-<period> rules' periods, in restic's order, with their units.
WITHIN_PERIODS = (
    ("hourly", "hour"),
    ("daily", "day"),
    ("weekly", "week"),
    ("monthly", "month"),
    ("yearly", "year"),
)
_PERIOD_UNITS = dict(WITHIN_PERIODS)


def _tag_list(tags: Sequence[str]) -> str:
    return "[" + ", ".join(tags) + "]"


def has_tags(snapshot_tags: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether a snapshot carries every tag of ``wanted``; "" matches no tags at all."""
    for tag in wanted:
        if tag == "" and not snapshot_tags:
            return True
        if tag not in snapshot_tags:
            return False
    return True


def newest_first(snapshots: Iterable[S]) -> list[S]:
    """Snapshots newest first; equal times in the order of their ids."""
    return sorted(snapshots, key=lambda s: (-s.time_ns, s.id))


def apply_policy(snapshots: Iterable[S], policy: Policy, now_ns: int) -> Decision[S]:
    """Judge one group of snapshots by ``policy`` at ``now_ns`` (restic's ApplyPolicy).

    ``within`` is counted back from the newest snapshot that is older than ``now_ns``
    (a snapshot dated in the future does not move it). An empty policy keeps everything.
    """
    ordered = newest_first(snapshots)
    if policy.empty:
        return Decision(ordered, [], [KeepReason(s, (EMPTY_POLICY,)) for s in ordered])

    within = policy.within if policy.within is not None and not policy.within.zero else None
    latest = max((s.time_ns for s in ordered if s.time_ns < now_ns), default=None)
    cutoff = None if within is None or latest is None else within.before(latest)
    # --keep-within-<period>: (name, span, its cutoff, the period of a snapshot).
    within_periods = [
        (name, span, None if latest is None else span.before(latest), _PERIOD_OF[name])
        for name, span in policy.within_periods()
    ]
    last_within: list[int | None] = [None] * len(within_periods)

    counts = [count for _, count in policy.counts()]
    last_seen: list[int | None] = [None] * len(_PERIODS)
    keep: list[S] = []
    remove: list[S] = []
    reasons: list[KeepReason[S]] = []
    for number, snap in enumerate(ordered):
        matches = [
            f"has tags {_tag_list(tags)}" for tags in policy.tags if has_tags(snap.tags, tags)
        ]
        if within is not None and (cutoff is None or snap.time_ns > cutoff):
            matches.append(f"within {within}")
        moment = datetime.fromtimestamp(snap.time_ns // NS, UTC)
        oldest = number == len(ordered) - 1
        for i, (name, period) in enumerate(_PERIODS):
            if counts[i] == 0:
                continue
            value = number if period is None else period(moment)
            if value != last_seen[i] or oldest:
                # The oldest snapshot is kept while counts are left, to keep the
                # longest history; restic then says "oldest daily snapshot".
                prefix = "oldest " if value == last_seen[i] else ""
                matches.append(f"{prefix}{name} snapshot")
                last_seen[i] = value
                if counts[i] > 0:
                    counts[i] -= 1
        for i, (name, span, since, period_of) in enumerate(within_periods):
            if since is None or snap.time_ns > since:
                value = period_of(moment)
                if value != last_within[i]:
                    matches.append(f"{name} within {span}")
                    last_within[i] = value
        if matches:
            keep.append(snap)
            counters = {name: counts[i] for i, (name, _) in enumerate(_PERIODS) if counts[i]}
            reasons.append(KeepReason(snap, tuple(matches), counters))
        else:
            remove.append(snap)
    return Decision(keep, remove, reasons)


def group_snapshots(
    snapshots: Iterable[G], by: Sequence[str] = BY_JOB
) -> list[tuple[GroupKey, list[G]]]:
    """Snapshots grouped by the fields ``by`` names (GROUP_FIELDS; none: one group),
    the groups sorted by client, job, paths, then tags."""
    unknown = set(by) - set(GROUP_FIELDS)
    if unknown:
        raise ValueError(f"cannot group by {', '.join(sorted(unknown))}")
    groups: dict[GroupKey, list[G]] = {}
    for snap in snapshots:
        groups.setdefault(GroupKey.of(snap, by), []).append(snap)
    return sorted(groups.items(), key=lambda item: item[0]._sort_key())


def plan_forget(
    snapshots: Iterable[G],
    policy_for: Callable[[GroupKey], Policy | None],
    now_ns: int,
    by: Sequence[str] = BY_JOB,
) -> list[GroupDecision[G]]:
    """Group snapshots (by client and job unless ``by`` says otherwise) and judge each
    group by its policy.

    Groups come sorted by their keys. A group whose ``policy_for`` is None keeps
    everything, each snapshot with the reason "no policy".
    """
    result = []
    for key, members in group_snapshots(snapshots, by):
        policy = policy_for(key)
        if policy is None:
            ordered = newest_first(members)
            decision = Decision(ordered, [], [KeepReason(s, (NO_POLICY,)) for s in ordered])
        else:
            decision = apply_policy(members, policy, now_ns)
        result.append(GroupDecision(key, policy, decision.keep, decision.remove, decision.reasons))
    return result
