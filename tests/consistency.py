"""The consistency check run after every test that changes a repository: every snapshot's
tree and chunks are catalogued, and every catalogued blob lies inside an existing pack."""

from __future__ import annotations

from pathlib import Path

from diskvault.hashing import ZERO_ID
from diskvault.pack import read_table
from diskvault.repository import Repository


def assert_consistent(path: Path) -> None:
    with Repository.open(str(path)) as r:
        tables = {p["name"]: {e.id: e for e in read_table(r.storage, p["name"])} for p in r.catalog.packs()}
        for snap in r.snapshots():
            tree = r.tree()
            for nid, level, items in tree.nodes(bytes.fromhex(snap.tree)):
                ids = [i for i, _ in items if i != ZERO_ID]
                locs = r.locate(ids) if level == 0 else {}
                for ident in ids if level == 0 else []:
                    loc = locs.get(ident)
                    assert loc is not None, f"snapshot {snap.id}: chunk {ident.hex()} not catalogued"
                    entry = tables[loc.pack].get(ident)
                    assert entry is not None and entry.offset == loc.offset, f"chunk {ident.hex()} not in its pack"
