"""Hypothesis properties of the retention policy engine."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from diskvault.policy import Duration, Policy, Snap, apply_policy

BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)
TAGS = ["golden", "nightly", "weekly"]

snap_lists = st.lists(
    st.tuples(
        st.integers(0, 3 * 365 * 24 * 60),  # minutes after BASE
        st.sampled_from(["a", "b"]),
        st.sampled_from(["/img", "/dev/sda"]),
        st.frozensets(st.sampled_from(TAGS), max_size=2),
    ),
    max_size=40,
).map(lambda items: [Snap(f"{i:04}", BASE + timedelta(minutes=m), h, s, t) for i, (m, h, s, t) in enumerate(items)])

counts = st.one_of(st.just(0), st.integers(1, 6), st.just(-1))
policies = st.builds(
    Policy,
    last=counts, hourly=counts, daily=counts, weekly=counts, monthly=counts, yearly=counts,
    within=st.one_of(st.none(), st.builds(Duration, st.integers(0, 1), st.integers(0, 6), st.integers(0, 20), st.integers(0, 30))),
    tags=st.lists(st.frozensets(st.sampled_from(TAGS), min_size=1, max_size=2), max_size=2).map(tuple),
)


def kept(groups) -> set[str]:
    return {s.id for g in groups for s, _ in g.keep}


@given(snap_lists, policies)
def test_keep_and_remove_partition_the_snapshots(snaps, policy):
    groups = apply_policy(snaps, policy)
    keep = [s.id for g in groups for s, _ in g.keep]
    remove = [s.id for g in groups for s in g.remove]
    assert sorted(keep + remove) == sorted(s.id for s in snaps)
    assert all(why for g in groups for _, why in g.keep)


@given(snap_lists, policies)
def test_never_removes_everything_when_a_rule_is_set(snaps, policy):
    if policy.empty():
        return
    for g in apply_policy(snaps, policy):
        assert g.keep, f"group {g.host} {g.source} would lose every snapshot"


@given(snap_lists, st.integers(1, 10))
def test_keep_last_keeps_exactly_the_n_newest(snaps, n):
    for g in apply_policy(snaps, Policy(last=n)):
        members = sorted([s for s, _ in g.keep] + g.remove, key=lambda s: (s.time, s.id), reverse=True)
        assert [s.id for s, _ in g.keep] == [s.id for s in members[:n]]


@st.composite
def policy_and_more(draw):
    base = draw(policies)
    field = draw(st.sampled_from(["last", "hourly", "daily", "weekly", "monthly", "yearly", "within", "tags"]))
    if field == "within":
        more = dataclasses.replace(base, within=draw(st.builds(Duration, st.integers(0, 2), st.integers(0, 12), st.integers(0, 40), st.integers(0, 48))))
        if base.within is not None:  # a wider window
            w = base.within
            more = dataclasses.replace(base, within=Duration(w.years + 1, w.months, w.days, w.hours))
    elif field == "tags":
        more = dataclasses.replace(base, tags=base.tags + (draw(st.frozensets(st.sampled_from(TAGS), min_size=1, max_size=2)),))
    else:
        old = getattr(base, field)
        new = -1 if old == -1 else old + draw(st.integers(1, 5))
        if draw(st.booleans()):
            new = -1
        more = dataclasses.replace(base, **{field: new})
    return base, more


@given(snap_lists, policy_and_more())
def test_keeping_is_monotone(snaps, pair):
    base, more = pair
    assert kept(apply_policy(snaps, base)) <= kept(apply_policy(snaps, more))


@given(snap_lists, policies, st.sampled_from(TAGS))
def test_keep_tag_always_keeps_tagged(snaps, policy, tag):
    policy = dataclasses.replace(policy, tags=policy.tags + (frozenset({tag}),))
    keep = kept(apply_policy(snaps, policy))
    assert {s.id for s in snaps if tag in s.tags} <= keep
