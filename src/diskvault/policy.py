"""The retention policy engine behind ``diskvault forget``: pure, no I/O, no clock.

Given snapshots (id, time, host, source, tags) and a ``Policy``, ``apply_policy`` returns,
per group (host + source), which snapshots are kept, with the rules that kept each one, and
which are removed. Semantics follow restic's ``forget`` (docs/retention.md):

- snapshots are grouped by host and source; each group is decided on its own, newest first;
  "newest" is by sequence number (the order the snapshots were taken in, whatever the
  clock said), then time: a clock that was set back cannot make the newest backup look
  oldest, so ``last N`` and the always-kept newest are the ones taken last;
- ``last N`` keeps the N newest; ``hourly/daily/weekly/monthly/yearly N`` keep the newest
  snapshot of each of the N most recent hours/days/ISO weeks/months/years that have a
  snapshot (``-1`` = unlimited);
- ``within D`` keeps every snapshot taken within D of the group's newest snapshot;
- ``tags`` keeps every snapshot carrying all tags of one of the tag sets;
- a snapshot is kept when any rule keeps it (rules are independent, so keeping is monotone).

Differences from restic, on purpose: buckets use UTC, not the snapshot's local time; when
any rule is set, the newest snapshot of every group is always kept (so a ``--keep-tag``-only
policy never empties a group); there are no ``--keep-within-hourly``-style rules. Raises
ValueError for a malformed duration.

``parse_max_unused`` reads prune's ``--max-unused`` limit (how much unused space in packs is
tolerated before repacking); ``DEFAULT_MAX_UNUSED`` is its default.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .repository.chunking import parse_size

UNLIMITED = -1
DEFAULT_MAX_UNUSED = "2%"  # restic says 5 %; 2 % keeps a pruned series within 5 % of a fresh repository


@dataclass(frozen=True)
class Duration:
    """A calendar duration like restic's ``1y2m3d4h`` (plus ``w`` for weeks)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def before(self, t: datetime) -> datetime:
        """``t`` minus this duration (months and years by the calendar, days clamped); the
        earliest datetime when that is before the year 1 (``99999y``: everything is within)."""
        month_index = t.year * 12 + (t.month - 1) - self.years * 12 - self.months
        year, month = divmod(month_index, 12)
        month += 1
        try:
            day = min(t.day, calendar.monthrange(year, month)[1])
            return t.replace(year=year, month=month, day=day) - timedelta(days=self.days, hours=self.hours)
        except (ValueError, OverflowError):  # before the year 1
            return datetime.min.replace(tzinfo=t.tzinfo)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"


_DURATION = re.compile(r"(\d+)([ymwdh])")


def parse_duration(text: str) -> Duration:
    """``2d``, ``1y6m``, ``36h``, ``2w``: raises ValueError for anything else."""
    s = text.strip().lower()
    if not s or _DURATION.sub("", s):
        raise ValueError(f"{text!r} is not a duration: use numbers with y, m, w, d, h (e.g. 2d, 1y6m, 36h)")
    values = {"y": 0, "m": 0, "d": 0, "h": 0}
    for n, unit in _DURATION.findall(s):
        if unit == "w":
            values["d"] += 7 * int(n)
        else:
            values[unit] += int(n)
    return Duration(values["y"], values["m"], values["d"], values["h"])


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    tags: tuple[frozenset[str], ...] = ()  # keep a snapshot carrying all tags of any set

    def empty(self) -> bool:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        return all(n == 0 for n in counts) and self.within is None and not self.tags


def parse_tag_sets(values: Iterable[str]) -> tuple[frozenset[str], ...]:
    """``--keep-tag a,b --keep-tag c``: keep snapshots tagged (a and b), or c."""
    out = []
    for v in values:
        tags = frozenset(t.strip() for t in v.split(",") if t.strip())
        if tags:
            out.append(tags)
    return tuple(out)


@dataclass(frozen=True)
class Snap:
    id: str
    time: datetime  # timezone-aware
    host: str = ""
    source: str = ""
    tags: frozenset[str] = frozenset()
    seq: int = 0  # repository-wide sequence number (0: recorded before there were any)


@dataclass
class Group:
    host: str
    source: str
    keep: list[tuple[Snap, list[str]]] = field(default_factory=list)  # newest first, with reasons
    remove: list[Snap] = field(default_factory=list)  # newest first


def _utc(t: datetime) -> datetime:
    return t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)


_BUCKETS: list[tuple[str, str, Callable[[datetime], object]]] = [
    ("hourly", "hourly snapshot", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", "daily snapshot", lambda t: (t.year, t.month, t.day)),
    ("weekly", "weekly snapshot", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", "monthly snapshot", lambda t: (t.year, t.month)),
    ("yearly", "yearly snapshot", lambda t: t.year),
]


def _decide(snaps: Sequence[Snap], policy: Policy) -> list[list[str]]:
    """Reasons per snapshot (``snaps`` newest first); an empty list means remove."""
    reasons: list[list[str]] = [[] for _ in snaps]
    if policy.empty() or not snaps:
        return reasons
    newest = max(_utc(s.time) for s in snaps)
    horizon = policy.within.before(newest) if policy.within is not None else None
    for i, s in enumerate(snaps):
        if policy.last == UNLIMITED or i < policy.last:
            reasons[i].append("last snapshot")
    for name, label, bucket in _BUCKETS:
        left = getattr(policy, name)
        last_bucket: object = object()
        for i, s in enumerate(snaps):
            if left == 0:
                break
            b = bucket(_utc(s.time))
            if b != last_bucket:
                reasons[i].append(label)
                last_bucket = b
                if left > 0:
                    left -= 1
    if horizon is not None:
        for i, s in enumerate(snaps):
            if _utc(s.time) >= horizon:
                reasons[i].append(f"within {policy.within}")
    for tagset in policy.tags:
        for i, s in enumerate(snaps):
            if tagset <= s.tags:
                reasons[i].append(f"tagged {','.join(sorted(tagset))}")
    if not reasons[0]:
        reasons[0].append("newest snapshot")
    return reasons


def apply_policy(
    snaps: Iterable[Snap], policy: Policy, tag: Iterable[str] = (), host: str | None = None
) -> list[Group]:
    """Decide every group. Only snapshots carrying all of ``tag`` (and of ``host``, when
    given) are considered; others are neither kept nor removed (not listed at all)."""
    want = frozenset(tag)
    groups: dict[tuple[str, str], list[Snap]] = {}
    for s in snaps:
        if not want <= s.tags or (host is not None and s.host != host):
            continue
        groups.setdefault((s.host, s.source), []).append(s)
    out = []
    for (h, src), members in sorted(groups.items()):
        members.sort(key=lambda s: (s.seq, _utc(s.time), s.id), reverse=True)
        g = Group(h, src)
        for s, why in zip(members, _decide(members, policy)):
            if why:
                g.keep.append((s, why))
            else:
                g.remove.append(s)
        out.append(g)
    return out


def parse_time(text: str) -> datetime:
    """A snapshot record's ISO time (``...Z``) as an aware datetime."""
    return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))

def parse_max_unused(text: str) -> tuple[str, float]:
    """``5%``, ``0``, ``200M``, ``unlimited`` -> ("percent"|"bytes"|"unlimited", value);
    raises ValueError."""
    s = text.strip().lower()
    if s == "unlimited":
        return "unlimited", float("inf")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", s)
    if m:
        pct = float(m.group(1))
        if pct >= 100:
            raise ValueError(f"--max-unused {text}: a percentage must be below 100% (or say unlimited)")
        return "percent", pct
    try:
        return "bytes", float(parse_size(s))
    except ValueError:
        raise ValueError(f"--max-unused {text!r}: give a percentage (5%), a size (200M) or unlimited") from None
