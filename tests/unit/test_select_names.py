"""Names that are not UTF-8 in JSON (rawnames), records that carry them, and the
sequence-number order forget and latest follow when the clock was set back."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

from hypothesis import given, strategies as st

from diskvault.policy import Policy, Snap, apply_policy
from diskvault.rawnames import escape, is_raw, unescape
from diskvault.repository.catalog import SnapshotRecord

NAMES = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)


@given(NAMES)
def test_any_path_bytes_round_trip_through_strict_json(raw):
    name = os.fsdecode(raw)
    text = json.dumps(escape({"source": name, "n": 1}))
    assert "\\ud" not in text  # no lone surrogates: strict JSON parsers accept it
    back = unescape(json.loads(text))
    assert os.fsencode(back["source"]) == raw and back["n"] == 1
    assert ("source_raw" in json.loads(text)) == is_raw(name)


@given(NAMES)
def test_a_record_keeps_its_source_bytes_in_row_and_json(raw):
    rec = SnapshotRecord("ab" * 16, "2026-01-01T00:00:00Z", "h", os.fsdecode(raw), 1, ["t"], "00" * 32, seq=3)
    assert SnapshotRecord.from_row(rec.to_row()) == rec
    assert SnapshotRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec


def test_an_old_record_reads_with_seq_zero():
    old = {"id": "ab" * 16, "time": "2026-01-01T00:00:00Z", "host": "h", "source": "/img", "size": 1,
           "tags": [], "tree": "00" * 32, "unknown_later_field": 1}
    rec = SnapshotRecord.from_json(old)
    assert (rec.seq, rec.mounted, rec.size_changed) == (0, None, None)


def test_keep_last_follows_the_sequence_number_not_the_clock():
    t0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
    older = Snap("a", t0, "h", "/img", frozenset(), seq=1)
    newer_but_clock_set_back = Snap("b", t0 - timedelta(days=30), "h", "/img", frozenset(), seq=2)
    for policy in (Policy(last=1), Policy(tags=(frozenset({"x"}),)), Policy(daily=1)):
        (group,) = apply_policy([older, newer_but_clock_set_back], policy)
        assert group.keep[0][0].id == "b", policy  # the one taken last is never dropped


def test_records_without_seq_order_by_time():
    t0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
    snaps = [Snap("old", t0 - timedelta(days=1)), Snap("new", t0), Snap("after-upgrade", t0 - timedelta(days=9), seq=1)]
    (group,) = apply_policy(snaps, Policy(last=2))
    assert [s.id for s, _ in group.keep] == ["after-upgrade", "new"] and [s.id for s in group.remove] == ["old"]
