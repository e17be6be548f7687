"""images.target.Target on real files: the final rename never replaces what appeared meanwhile,
stdout takes writes in order, a killed restore's temporary file is found by name."""

from __future__ import annotations

import os

import pytest

from diskvault.errors import TargetError
from diskvault.images.target import Target, remove_stale_temps, temp_prefix


def test_commit_never_replaces_a_file_that_appeared(tmp_path):
    final = tmp_path / "t.img"
    target = Target(str(final), 4096, force=False)
    target.write(0, b"a" * 4096)
    final.write_bytes(b"someone else's")  # appears while the restore runs
    with pytest.raises(TargetError, match="appeared while restoring"):
        target.commit()
    target.abort()
    assert final.read_bytes() == b"someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["t.img"]


def test_commit_never_replaces_a_symlink_that_appeared(tmp_path):
    final = tmp_path / "t.img"
    victim = tmp_path / "victim"
    target = Target(str(final), 10, force=False)
    target.write(0, b"0123456789")
    os.symlink(victim, final)
    with pytest.raises(TargetError):
        target.commit()
    target.abort()
    assert not victim.exists() and final.is_symlink()


def test_temp_is_0600_held_and_named_after_the_target(tmp_path):
    target = Target(str(tmp_path / "t.img"), 10, force=False)
    try:
        temp = target.temp
        assert os.path.basename(temp).startswith(temp_prefix("t.img")) and os.path.dirname(temp) == str(tmp_path)
        assert os.stat(temp).st_mode & 0o777 == 0o600
        assert remove_stale_temps(str(tmp_path), "t.img") == []  # in use: kept
    finally:
        target.abort()
    assert list(tmp_path.iterdir()) == []


def test_long_names_keep_temp_names_valid(tmp_path):
    name = "x" * 250
    target = Target(str(tmp_path / name), 10, force=False)
    target.write(0, b"0123456789")
    target.commit()
    assert (tmp_path / name).read_bytes() == b"0123456789"


def test_stream_writes_in_order_and_fills_gaps(tmp_path):
    out = tmp_path / "out"
    with open(out, "wb") as f:
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)
        try:
            target = Target("-", 20, force=False)
            target.write(5, b"abc")
            with pytest.raises(ValueError):
                target.write(0, b"x")
            target.write(10, b"def")
            target.commit()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    assert out.read_bytes() == bytes(5) + b"abc" + bytes(2) + b"def" + bytes(7)
