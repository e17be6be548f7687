"""Helpers for the forget/prune/lock tests: a series of slowly changing images, snapshotted
in-process, and checks that a repository holds no unreferenced data."""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import blake3
from helpers import random_bytes, secret

from diskvault.ops.retention.prune import mark
from diskvault.ops.progress import NoProgress
from diskvault.ops.snapshot import take_snapshot
from diskvault.repository import Repository

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def digest(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def snapshot_series(repo_path: Path, image: Path, count: int, size: int, changes: int, seed: int = 0,
                    tags=lambda i: []) -> list[tuple[str, str]]:
    """Take ``count`` snapshots of ``image``, changing ``changes`` random 4 KiB blocks before
    each one after the first; one hour apart. Returns ``[(snapshot id, image digest)]``."""
    rng = random.Random(seed)
    data = bytearray(random_bytes(size, seed))
    out = []
    with Repository.open(str(repo_path), passphrase=secret) as r:
        for i in range(count):
            if i:
                for k in range(changes):
                    off = rng.randrange(0, size - 4096) & ~4095
                    data[off : off + 4096] = random_bytes(4096, seed * 100_000 + i * 1000 + k)
            image.write_bytes(data)
            rec = take_snapshot(r, str(image), tags=tags(i), now=lambda i=i: T0 + timedelta(hours=i))
            out.append((rec.id, blake3.blake3(data).hexdigest()))
    return out


def repo_bytes(path: Path) -> int:
    """Bytes of every file of a repository (packs, catalog with WAL, records, config)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def assert_no_unreferenced_packs(repo_path: Path) -> None:
    """Every pack file is catalogued, every catalogued pack exists and holds a live blob,
    no temporary file is left."""
    with Repository.open(str(repo_path), passphrase=secret) as r:
        names = {p["name"] for p in r.catalog.packs()}
        files = set(r.storage.list("packs"))
        assert files == names, f"unknown pack files {files - names}, missing {names - files}"
        live = mark(r, NoProgress())
        live_packs = {loc.pack for loc in r.locate(live).values()}
        assert live_packs == names, f"packs without live blobs: {names - live_packs}"
    leftovers = [f for _d, _s, fs in os.walk(repo_path) for f in fs if ".tmp-" in f]
    assert not leftovers, leftovers
