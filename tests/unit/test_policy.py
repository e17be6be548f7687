"""The retention policy engine: every keep rule, grouping, filters, durations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from diskvault.policy import UNLIMITED, Duration, Policy, Snap, apply_policy, parse_duration, parse_tag_sets

T0 = datetime(2026, 3, 31, 23, 30, tzinfo=timezone.utc)  # a Tuesday


def series(times, host="h", source="/img", tags=()):
    return [Snap(f"{host}{source}{i:04}", t, host, source, frozenset(tags)) for i, t in enumerate(times)]


def kept_ids(groups):
    return {s.id for g in groups for s, _ in g.keep}


def removed_ids(groups):
    return {s.id for g in groups for s in g.remove}


def reasons(groups):
    return {s.id: why for g in groups for s, why in g.keep}


def test_keep_last_keeps_the_n_newest():
    snaps = series([T0 - timedelta(hours=i) for i in range(10)])
    groups = apply_policy(snaps, Policy(last=3))
    assert kept_ids(groups) == {s.id for s in snaps[:3]}
    assert removed_ids(groups) == {s.id for s in snaps[3:]}
    assert all(why == ["last snapshot"] for why in reasons(groups).values())


def test_keep_hourly_keeps_newest_of_each_recent_hour():
    # every 20 minutes for 5 hours: 3 per hour
    snaps = series([T0 - timedelta(minutes=20 * i) for i in range(15)])
    groups = apply_policy(snaps, Policy(hourly=3))
    hours = {}
    for s in snaps:
        hours.setdefault(s.time.replace(minute=0), []).append(s)
    newest_hours = sorted(hours, reverse=True)[:3]
    assert kept_ids(groups) == {max(hours[h], key=lambda s: s.time).id for h in newest_hours}


def test_keep_daily_counts_days_that_have_snapshots():
    # days 0,1,3,7 back, two snapshots each: keep-daily 3 keeps the newest of days 0, 1, 3
    days = [0, 1, 3, 7]
    times = [T0 - timedelta(days=d, hours=h) for d in days for h in (0, 5)]
    snaps = series(times)
    groups = apply_policy(snaps, Policy(daily=3))
    assert kept_ids(groups) == {snaps[0].id, snaps[2].id, snaps[4].id}
    assert reasons(groups)[snaps[0].id] == ["daily snapshot"]


def test_keep_weekly_uses_iso_weeks():
    # one snapshot a day for 21 days ending on Tuesday 2026-03-31
    snaps = series([T0 - timedelta(days=i) for i in range(21)])
    groups = apply_policy(snaps, Policy(weekly=2))
    # newest of this week (Tue 31st) and newest of last week (Sun 29th)
    assert sorted(s.time.day for g in groups for s, _ in g.keep) == [29, 31]


def test_keep_monthly_and_yearly():
    times = [datetime(y, m, 15, tzinfo=timezone.utc) for y in (2024, 2025, 2026) for m in (1, 6, 11)]
    snaps = series(times)
    groups = apply_policy(snaps, Policy(monthly=2))
    assert sorted(s.time.strftime("%Y-%m") for g in groups for s, _ in g.keep) == ["2026-06", "2026-11"]
    groups = apply_policy(snaps, Policy(yearly=2))
    assert sorted(s.time.strftime("%Y-%m") for g in groups for s, _ in g.keep) == ["2025-11", "2026-11"]


def test_unlimited_count_keeps_every_bucket():
    snaps = series([T0 - timedelta(days=i, hours=h) for i in range(10) for h in (0, 1)])
    groups = apply_policy(snaps, Policy(daily=UNLIMITED))
    assert len(kept_ids(groups)) == 10


def test_keep_within_is_relative_to_the_newest_snapshot():
    # the newest snapshot is a month old: --keep-within 2d still keeps the last two days of it
    newest = T0 - timedelta(days=30)
    snaps = series([newest - timedelta(hours=12 * i) for i in range(10)])
    groups = apply_policy(snaps, Policy(within=parse_duration("2d")))
    assert kept_ids(groups) == {s.id for s in snaps[:5]}  # 0, 12, 24, 36, 48 hours
    assert reasons(groups)[snaps[0].id] == ["within 2d"]


def test_keep_tag_keeps_tagged_snapshots_and_sets_need_all_tags():
    a = series([T0 - timedelta(days=i) for i in range(4)], tags=("golden",))
    b = series([T0 - timedelta(days=10 + i) for i in range(4)], source="/img", host="h", tags=("x", "y"))
    b = [Snap("b" + s.id, s.time, s.host, s.source, s.tags) for s in b]
    c = [Snap("c" + s.id, s.time, s.host, s.source, frozenset({"x"})) for s in series([T0 - timedelta(days=20)])]
    groups = apply_policy(a + b + c, Policy(tags=parse_tag_sets(["golden", "x,y"])))
    assert kept_ids(groups) == {s.id for s in a + b}
    assert removed_ids(groups) == {c[0].id}


def test_tag_only_policy_still_keeps_the_newest():
    snaps = series([T0 - timedelta(days=i) for i in range(3)])
    groups = apply_policy(snaps, Policy(tags=parse_tag_sets(["golden"])))
    assert kept_ids(groups) == {snaps[0].id}
    assert reasons(groups)[snaps[0].id] == ["newest snapshot"]


def test_rules_combine_and_list_every_reason():
    snaps = series([T0 - timedelta(days=i) for i in range(5)])
    groups = apply_policy(snaps, Policy(last=1, daily=2))
    r = reasons(groups)
    assert r[snaps[0].id] == ["last snapshot", "daily snapshot"]
    assert r[snaps[1].id] == ["daily snapshot"]
    assert len(r) == 2


def test_groups_by_host_and_source():
    a = series([T0 - timedelta(hours=i) for i in range(3)], host="a")
    b = series([T0 - timedelta(hours=i) for i in range(3)], host="b")
    c = series([T0 - timedelta(hours=i) for i in range(3)], host="a", source="/other")
    groups = apply_policy(a + b + c, Policy(last=1))
    assert [(g.host, g.source) for g in groups] == [("a", "/img"), ("a", "/other"), ("b", "/img")]
    assert kept_ids(groups) == {a[0].id, b[0].id, c[0].id}


def test_tag_and_host_filters_leave_others_alone():
    a = series([T0 - timedelta(hours=i) for i in range(3)], host="a", tags=("nightly",))
    b = series([T0 - timedelta(hours=i) for i in range(3)], host="b", tags=("nightly",))
    c = [Snap("c" + s.id, s.time, s.host, s.source, frozenset()) for s in a]
    groups = apply_policy(a + b + c, Policy(last=1), tag=["nightly"], host="a")
    listed = kept_ids(groups) | removed_ids(groups)
    assert listed == {s.id for s in a}
    assert removed_ids(groups) == {a[1].id, a[2].id}


def test_empty_policy_removes_nothing():
    snaps = series([T0 - timedelta(hours=i) for i in range(3)])
    assert Policy().empty()
    groups = apply_policy(snaps, Policy())
    assert removed_ids(groups) == {s.id for s in snaps} and not kept_ids(groups)  # callers refuse it


@pytest.mark.parametrize("text,expected", [
    ("2d", Duration(days=2)), ("1y6m", Duration(years=1, months=6)), ("36h", Duration(hours=36)),
    ("2w", Duration(days=14)), ("1y2m3d4h", Duration(1, 2, 3, 4)),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "2x", "d", "1.5d", "-1d", "2d junk"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_month_arithmetic_clamps_to_month_end():
    assert Duration(months=1).before(T0) == datetime(2026, 2, 28, 23, 30, tzinfo=timezone.utc)
    assert Duration(years=1, months=2).before(T0) == datetime(2025, 1, 31, 23, 30, tzinfo=timezone.utc)
