"""The cached catalog of a remote repository is shared by the processes of one machine: a
sync in one (a ``snapshots`` listing) may record a pack or a snapshot that another (the
snapshot writing it) is about to record. Recording one twice must neither fail nor duplicate."""

from __future__ import annotations

from diskvault.repository.catalog import Catalog
from diskvault.repository.pack import TYPE_CHUNK, Entry
from diskvault.repository.record import SnapshotRecord


def test_a_pack_recorded_twice_keeps_one_row_and_repoints(tmp_path):
    cat = Catalog(str(tmp_path / "catalog.sqlite"))
    cat.create({"repository_id": "ab" * 16})
    entries = [Entry(bytes([i]) * 32, TYPE_CHUNK, 0, 8 + 100 * i, 100, 100) for i in range(3)]
    name = "packs/aa/" + "aa" * 16 + ".pack"
    cat.add_pack(name, 400, entries)  # the other process's sync
    cat.add_pack(name, 400, entries)  # the writer itself: used to raise IntegrityError
    assert [p["name"] for p in cat.packs()] == [name]
    assert len(cat.locate([e.id for e in entries])) == 3
    other = "packs/bb/" + "bb" * 16 + ".pack"
    cat.add_pack(other, 400, entries)  # a repacked copy recorded by a sync ...
    cat.switch_pack(other, 400, entries)  # ... then by prune's writer, which points the blobs at it
    assert {loc.pack for loc in cat.locate([e.id for e in entries]).values()} == {other}
    cat.close()


def test_a_snapshot_recorded_twice_keeps_one_row(tmp_path):
    cat = Catalog(str(tmp_path / "catalog.sqlite"))
    cat.create({"repository_id": "ab" * 16})
    rec = SnapshotRecord(id="cd" * 16, time="2026-11-30T12:00:00Z", host="h", source="/dev/x", size=1,
                         tags=[], tree="ef" * 32, seq=1)
    for _ in range(2):
        with cat.transaction():
            cat.add_snapshot(rec)
    assert [s.id for s in cat.snapshots()] == [rec.id]
    cat.close()
