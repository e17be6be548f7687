"""Bare-metal restore: a whole-disk snapshot onto a disk of another size.

``verify`` accepts a target whose partition table was fitted to its size (and nothing
else changed), and still reports an unadjusted or changed one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))

from test_table_adjust import make_gpt, restore_onto  # noqa: E402

from helpers import run_cli  # noqa: E402

MiB = 1 << 20


def verify_json(repo, target, code):
    proc = run_cli("verify", "-r", repo, "latest", target, "--json", check=False)
    assert proc.returncode == code, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_verify_accepts_a_fitted_table_and_nothing_else(tmp_path, repo_path):
    image = tmp_path / "disk.img"
    ranges = make_gpt(image, 64 * MiB, 512)
    run_cli("snapshot", "-r", repo_path, image)
    big = tmp_path / "big.img"
    restore_onto(image, big, 96 * MiB, 512)
    v = verify_json(repo_path, big, 0)
    assert v["identical"] and v["table_adjusted"] and v["not_compared"] == {"offset": 64 * MiB, "length": 32 * MiB}
    grown = tmp_path / "grown.img"
    restore_onto(image, grown, 96 * MiB, 512, grow=4)
    v = verify_json(repo_path, grown, 0)
    assert v["grown_partition"] == 4
    # a byte changed inside a partition is still a difference
    with open(big, "r+b") as f:
        f.seek(ranges[2][0] + 12345)
        f.write(b"\xff")
    v = verify_json(repo_path, big, 9)
    [d] = v["differing"]
    assert d["offset"] <= ranges[2][0] + 12345 < d["offset"] + d["length"] and d["length"] <= 4096
    # the image copied onto a bigger disk without fitting the table differs
    raw = tmp_path / "raw.img"
    raw.write_bytes(image.read_bytes())
    os.truncate(raw, 96 * MiB)
    v = verify_json(repo_path, raw, 9)
    assert not v["identical"] and v["not_compared"] is None and v["table_adjusted"] == []
    big.unlink(), grown.unlink(), raw.unlink()
