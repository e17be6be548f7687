"""Smoke test of the CLI round trip (the thorough tests live beside it)."""

from helpers import random_bytes, run_cli


def test_snapshot_restore_round_trip(tmp_path, repo_path):
    img = tmp_path / "a.img"
    img.write_bytes(random_bytes(300_000, 1) + bytes(200_000) + random_bytes(100_000, 2))
    run_cli("snapshot", "-r", repo_path, img)
    run_cli("restore", "-r", repo_path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()
