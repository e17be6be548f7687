"""`restore --partition N` writes exactly that partition's bytes; unknown N is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))
from gpt_image import make_gpt_disk  # noqa: E402

from helpers import e2fsck_clean, run_cli, tool  # noqa: E402


def test_restore_one_partition(tmp_path, repo_path):
    disk, content, offset, length = make_gpt_disk(tmp_path)
    run_cli("snapshot", "-r", repo_path, disk)
    out = tmp_path / "p2.img"
    res = json.loads(run_cli("restore", "-r", repo_path, "latest", "--partition", "2", out, "--json").stdout)
    assert res["partition"] == 2 and res["size"] == length and res["offset"] == offset
    with open(disk, "rb") as f:
        f.seek(offset)
        assert out.read_bytes() == f.read(length)
    assert e2fsck_clean(out)
    listing = subprocess.run([tool("debugfs"), "-R", "cat /hello.txt", str(out)], capture_output=True, text=True)
    assert listing.stdout == "diskvault mount test\n"
    # partition 1 starts at sector 2048 and is not chunk-aligned: edges are cut exactly
    p1 = tmp_path / "p1.img"
    run_cli("restore", "-r", repo_path, "latest", "--partition", "1", p1)
    with open(disk, "rb") as f:
        f.seek(2048 * 512)
        assert p1.read_bytes() == f.read(4 << 20)


def test_restore_unknown_partition(tmp_path, repo_path):
    disk, _, _, _ = make_gpt_disk(tmp_path)
    run_cli("snapshot", "-r", repo_path, disk)
    out = run_cli("restore", "-r", repo_path, "latest", "--partition", "9", tmp_path / "x.img", check=False)
    assert out.returncode == 5
    assert "no partition 9 (partitions: 1, 2, 3)" in out.stderr.decode()
    assert not (tmp_path / "x.img").exists()


@pytest.mark.parametrize("cut", [1, 4095, 70_000])
def test_restore_partition_edges_not_aligned(tmp_path, repo_path, cut):
    """An MBR partition whose edges fall inside chunks: bytes exactly right at both ends."""
    from helpers import random_bytes

    disk = tmp_path / "d.img"
    disk.write_bytes(random_bytes(6 << 20, cut))
    start = 2048 + cut // 512
    script = f"label: dos\nstart={start}, size=5000, type=83\n"
    subprocess.run([tool("sfdisk"), "-q", str(disk)], input=script, text=True, check=True, capture_output=True)
    run_cli("snapshot", "-r", repo_path, disk)
    out = tmp_path / "p.img"
    run_cli("restore", "-r", repo_path, "latest", "--partition", "1", out)
    assert out.read_bytes() == disk.read_bytes()[start * 512 : (start + 5000) * 512]
