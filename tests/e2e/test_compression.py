"""The codec of new chunks: zstd level 1 for a first image, level 3 for an incremental (auto), or
forced. Unencrypted repositories: the stored bytes are compared exactly with the codec's output
(unseeded chunk boundaries, no authentication tags)."""

from __future__ import annotations

import json
import sqlite3

from helpers import random_bytes, run_cli

from diskvault.repository import compression
from diskvault.repository.chunking import Chunker, ChunkerParams


def text_image(size: int, seed: int) -> bytearray:
    """Compressible, chunk-friendly bytes: log-like lines with varying numbers."""
    out = bytearray()
    i = seed
    while len(out) < size:
        out += b"%08d host kernel: event %d handled in %d us, queue %d\n" % (i, i * 7919 % 100003, i % 977, i % 13)
        i += 1
    return out[:size]


def entry_flags(repo, pack_ids=None) -> dict[int, int]:
    """flags -> number of chunk entries (type 1), over the given packs (default: all)."""
    with sqlite3.connect(repo / "catalog.sqlite") as c:
        rows = c.execute("SELECT pack, flags FROM blobs WHERE type=1").fetchall()
    out: dict[int, int] = {}
    for pack, flags in rows:
        if pack_ids is None or pack in pack_ids:
            out[flags] = out.get(flags, 0) + 1
    return out


def packs(repo) -> set[int]:
    with sqlite3.connect(repo / "catalog.sqlite") as c:
        return {r[0] for r in c.execute("SELECT id FROM packs")}


def chunks(data: bytes) -> list[bytes]:
    """The chunks of ``data`` as the test repository (16 KiB average) cuts them."""
    return [data[o : o + n] for o, n in Chunker(ChunkerParams.for_average(16 << 10)).cut(data)]


def stored_at(data: bytes, codec: str, level: int = 0) -> int:
    """Bytes the chunks of ``data`` (all distinct) take with this codec."""
    return sum(len(compression.compress(c, codec, level)[0]) for c in chunks(bytes(data)))


def test_auto_uses_zstd_1_for_a_first_image_and_zstd_3_for_an_incremental(tmp_path, plain_repo_path):
    img = tmp_path / "disk.img"
    data = text_image(6 << 20, 1)
    img.write_bytes(data)
    first = json.loads(run_cli("snapshot", "-r", plain_repo_path, img, "--json").stdout)
    assert entry_flags(plain_repo_path) == {compression.FLAG_ZSTD: first["new_chunks"]}
    assert first["stored_bytes"] == stored_at(data, "zstd", 1) != stored_at(data, "zstd", 3)
    img_first = bytes(data)

    before = packs(plain_repo_path)
    for at in range(0, len(data), 1 << 20):  # one small edit per MiB: ~3% of the chunks change
        data[at + 5000 : at + 5040] = random_bytes(40, at)
    img.write_bytes(data)
    second = json.loads(run_cli("snapshot", "-r", plain_repo_path, img, "--json").stdout)
    new_packs = packs(plain_repo_path) - before
    assert 0 < second["new_chunks"] < first["new_chunks"] // 4
    assert entry_flags(plain_repo_path, new_packs) == {compression.FLAG_ZSTD: second["new_chunks"]}
    old = set(chunks(bytes(img_first)))
    new = {c for c in chunks(bytes(data)) if c not in old}
    assert second["stored_bytes"] == sum(len(compression.compress(c, "zstd", 3)[0]) for c in new)
    out = tmp_path / "out.img"
    run_cli("restore", "-r", plain_repo_path, second["id"], out)
    assert out.read_bytes() == bytes(data)


def test_auto_switches_to_zstd_1_when_most_of_an_image_is_new(tmp_path, plain_repo_path):
    (tmp_path / "a.img").write_bytes(text_image(1 << 20, 1))
    run_cli("snapshot", "-r", plain_repo_path, tmp_path / "a.img")
    before = packs(plain_repo_path)
    data = text_image(100 << 20, 10**7)  # another disk: all new
    (tmp_path / "b.img").write_bytes(data)
    snap = json.loads(run_cli("snapshot", "-r", plain_repo_path, tmp_path / "b.img", "--json").stdout)
    flags = entry_flags(plain_repo_path, packs(plain_repo_path) - before)
    assert flags == {compression.FLAG_ZSTD: snap["new_chunks"]}
    # the first ~9 MiB may still go to level 3 (the repository's prior), the bulk is level 1
    level1, level3 = stored_at(data, "zstd", 1), stored_at(data, "zstd", 3)
    assert abs(snap["stored_bytes"] - level1) < abs(level3 - level1) / 4  # (on these lines level 1 is smaller)


def test_forced_codecs_and_a_bad_one(tmp_path, plain_repo_path):
    img = tmp_path / "disk.img"
    img.write_bytes(text_image(2 << 20, 3))
    snap = json.loads(run_cli("snapshot", "-r", plain_repo_path, img, "--compression", "zstd", "--json").stdout)
    assert entry_flags(plain_repo_path) == {compression.FLAG_ZSTD: snap["new_chunks"]}
    img.write_bytes(text_image(2 << 20, 10**6))
    snap = json.loads(run_cli("snapshot", "-r", plain_repo_path, img, "--compression", "lz4", "--json").stdout)
    assert entry_flags(plain_repo_path)[compression.FLAG_LZ4] == snap["new_chunks"]
    bad = run_cli("snapshot", "-r", plain_repo_path, img, "--compression", "brotli", check=False)
    assert bad.returncode == 2 and b"choose auto, lz4 or zstd" in bad.stderr
    assert run_cli("check", "-r", plain_repo_path, "--read-data").returncode == 0
