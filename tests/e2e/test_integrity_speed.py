"""Acceptance: check --read-data runs at >= 80% of the speed of restore to /dev/null
(1 GiB image, half random, half half-compressible, some zeros; best of 3 alternating runs)."""

from __future__ import annotations

import time

import blake3
import pytest

from diskvault.chunking import ChunkerParams
from diskvault.ops.check import check
from diskvault.ops.restore import restore
from diskvault.ops.snapshot import take_snapshot
from diskvault.repository import Repository


BOILER = (b"log line: all is well, nothing to report. " * 13)[:512]


@pytest.mark.slow
def test_read_data_is_as_fast_as_restore(tmp_path):
    img = tmp_path / "src.img"
    with open(img, "wb") as f:
        for i in range(1024):
            if i % 16 == 15:
                f.write(bytes(1 << 20))
            elif i % 2:
                noise = blake3.blake3(i.to_bytes(8, "little")).digest(length=1 << 19)
                f.write(b"".join(noise[k : k + 512] + BOILER for k in range(0, 1 << 19, 512)))
            else:
                f.write(blake3.blake3(i.to_bytes(8, "little")).digest(length=1 << 20))
    with Repository.init(str(tmp_path / "repo"), ChunkerParams.for_average(64 << 10)) as r:
        snap = take_snapshot(r, str(img))
        img.unlink()
        best_r = best_c = float("inf")
        for _ in range(3):
            t = time.monotonic()
            restore(r, snap, "/dev/null")
            best_r = min(best_r, time.monotonic() - t)
            t = time.monotonic()
            rep = check(r, read_data=True)
            best_c = min(best_c, time.monotonic() - t)
            assert rep.sound and rep.read_data["packs"] == rep.packs
    print(f"restore to /dev/null {best_r:.2f} s, check --read-data {best_c:.2f} s, ratio {best_r / best_c:.0%}")
    assert best_r / best_c >= 0.8
