"""Describe a repository or one snapshot: sizes, deduplication, unique bytes."""

from __future__ import annotations

from ..repository import keys
from ..repository.catalog import SnapshotRecord
from ..repository.hashing import ZERO_ID
from ..repository import Repository


def _ratio(a: int, b: int) -> float:
    return round(a / b, 3) if b else 0.0


def repository_info(repo: Repository) -> dict:
    with repo.lock("shared", "info"):
        return _repository_info(repo)


def snapshot_info(repo: Repository, snap: SnapshotRecord) -> dict:
    with repo.lock("shared", "info"):
        return _snapshot_info(repo, snap)


def _repository_info(repo: Repository) -> dict:
    """Repository figures; every ratio is the quotient of two figures shown: ``dedup_ratio``
    data / unique, ``compression_ratio`` unique / stored, ``total_ratio`` logical / stored
    (stored: the pack files' bytes)."""
    snaps = repo.snapshots()
    totals = repo.catalog.blob_totals()
    logical = sum(s.size for s in snaps)
    data = sum(s.data_bytes for s in snaps)
    return {
        "repository": repo.path,
        "id": repo.config["id"],
        "format_version": repo.config["version"],
        "encryption": repo.crypto.mode,  # aes-256-gcm or none
        "keys": len(keys.key_names(repo.storage)),  # passphrases (key files)
        "chunker": repo.params.to_dict(),
        "snapshots": len(snaps),
        "logical_bytes": logical,
        "data_bytes": data,
        "unique_bytes": totals["raw_bytes"],
        "stored_bytes": totals["pack_bytes"],
        "chunks": totals["chunks"],
        "packs": totals["packs"],
        "dedup_ratio": _ratio(data, totals["raw_bytes"]),
        "compression_ratio": _ratio(totals["raw_bytes"], totals["pack_bytes"]),  # unique / stored, as shown
        "total_ratio": _ratio(logical, totals["pack_bytes"]),
    }


def _chunk_sizes(repo: Repository, snap: SnapshotRecord) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for leaf in repo.tree().leaves(bytes.fromhex(snap.tree)):
        if leaf.id != ZERO_ID:
            out[leaf.id] = leaf.length
    return out


def _snapshot_info(repo: Repository, snap: SnapshotRecord) -> dict:
    """Per-snapshot figures; ``unique_bytes`` are bytes no other snapshot references (what
    forgetting this snapshot alone would free, before compression)."""
    mine = _chunk_sizes(repo, snap)
    distinct = len(mine)
    tree = repo.tree()
    seen: set[bytes] = set()
    for other in repo.snapshots():
        if other.id == snap.id:
            continue
        for _nid, level, items in tree.nodes(bytes.fromhex(other.tree), seen):
            if level == 0:
                for ident, _ in items:
                    mine.pop(ident, None)
    d = snap.to_json()
    d.update(
        distinct_chunks=distinct,
        unique_chunks=len(mine),
        unique_bytes=sum(mine.values()),
        dedup_ratio=_ratio(snap.data_bytes, snap.new_bytes),
    )
    return d
