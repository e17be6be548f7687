"""Delta restore: only the chunks that differ are written, and the result is the snapshot."""

from __future__ import annotations

import os
import random

from helpers import random_bytes

from diskvault.ops.restore.delta import delta_restore
from diskvault.ops.snapshot import take_snapshot

MiB = 1 << 20


def _zero(fd):
    def zero(off, n):
        os.pwrite(fd, bytes(n), off)
    return zero


def _write(fd):
    def write(off, data):
        os.pwrite(fd, data, off)
    return write


def test_delta_writes_only_what_differs(tmp_path, repo):
    size = 24 * MiB
    img = bytearray(random_bytes(size, 7))
    img[8 * MiB:12 * MiB] = bytes(4 * MiB)  # a zero extent in the snapshot
    src = tmp_path / "a.img"
    src.write_bytes(img)
    snap = take_snapshot(repo, str(src))
    target = bytearray(img)
    rng = random.Random(3)
    regions = []
    for _ in range(12):  # ~3% of the image changed, in 12 places
        off, n = rng.randrange(0, size - (64 << 10)), rng.randrange(1, 64 << 10)
        target[off:off + n] = random_bytes(n, off)
        regions.append((off, n))
    target[9 * MiB:9 * MiB + 100] = b"x" * 100  # garbage where the snapshot has zeros
    tpath = tmp_path / "t.img"
    tpath.write_bytes(target)
    fd = os.open(tpath, os.O_RDWR)
    try:
        dry = delta_restore(repo, snap, fd, _write(fd), _zero(fd), dry_run=True)
        assert tpath.read_bytes() == bytes(target)  # nothing written
        res = delta_restore(repo, snap, fd, _write(fd), _zero(fd))
    finally:
        os.close(fd)
    assert tpath.read_bytes() == bytes(img)
    assert res.bytes_written == dry.bytes_written and res.chunks_written == dry.chunks_written
    changed = sum(n for _, n in regions) + 100
    max_chunk = repo.params.max_size
    assert res.bytes_written <= changed + (len(regions) + 1) * 2 * max_chunk
    assert res.chunks_unchanged > 10 * res.chunks_written
    assert res.bytes_read_target == size
    fd = os.open(tpath, os.O_RDWR)
    try:  # once more: nothing left to do
        again = delta_restore(repo, snap, fd, _write(fd), _zero(fd))
    finally:
        os.close(fd)
    assert again.bytes_written == 0 and again.chunks_written == 0
