"""Naming and recording snapshots (issue 11, items 5, 6, 9, 16, 17): names that are not UTF-8,
the --host/--source/--tag filters and an ambiguous latest, mounted sources, streams
(--stdin-filename, --stdin-from-command, a source that grows), a clock set back."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from diskvault.errors import EXIT_SNAPSHOT, EXIT_SOURCE_TARGET
from diskvault.ops.snapshot import take_snapshot
from diskvault.ops.progress import Progress
from diskvault.repository import Repository
from helpers import cli_env, make_ext4, make_tree, random_bytes, record_bytes, run_cli, secret


def _records(repo_path: Path) -> list[dict]:
    return [json.loads(record_bytes(repo_path, p.stem)) for p in sorted((repo_path / "snapshots").glob("*.json"))]


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- item 5: names that are not UTF-8 ---------------------------------------------------


def test_non_utf8_source_target_and_repository_round_trip(tmp_path):
    top = tmp_path
    repo = top / os.fsdecode(b"rep\xf6")
    src = top / os.fsdecode(b"disk\xe9.img")
    out_dir = top / os.fsdecode(b"out\xff")
    data = random_bytes(600_000, 5) + bytes(200_000)
    src.write_bytes(data)
    out_dir.mkdir()
    run_cli("init", "-r", repo)

    snap = json.loads(run_cli("snapshot", "-r", repo, src, "--json", "--no-progress").stdout)
    exact = os.fsencode(os.path.abspath(src))
    assert base64.b64decode(snap["source_raw"]) == exact
    assert snap["source"] == exact.decode("utf-8", "replace")
    listed = json.loads(run_cli("snapshots", "-r", repo, "--json").stdout)
    assert [(s["id"], base64.b64decode(s["source_raw"])) for s in listed] == [(snap["id"], exact)]
    # the record file is strict JSON: no lone surrogate escapes
    body = record_bytes(repo, next((repo / "snapshots").glob("*.json")).stem)
    assert b"\\ud" not in body and json.loads(body)["source_raw"] == snap["source_raw"]

    target = out_dir / os.fsdecode(b"r\xe9.img")
    run_cli("restore", "-r", repo, "latest", "--source", src, target, "--no-progress")
    assert target.read_bytes() == data
    run_cli("verify", "-r", repo, "latest", "--source", src, src, "--no-progress")

    run_cli("repair", "-r", repo, "--rebuild-catalog")
    again = json.loads(run_cli("snapshots", "-r", repo, "--json").stdout)
    assert [(s["id"], base64.b64decode(s["source_raw"])) for s in again] == [(snap["id"], exact)]
    target.unlink()
    run_cli("restore", "-r", repo, snap["id"][:8], target, "--no-progress")
    assert target.read_bytes() == data
    run_cli("check", "-r", repo)


def test_a_snapshot_that_cannot_be_recorded_leaves_no_record(tmp_path, repo_path):
    src = tmp_path / "disk.img"
    src.write_bytes(random_bytes(300_000, 6))
    conn = sqlite3.connect(repo_path / "catalog.sqlite")
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON snapshots BEGIN SELECT RAISE(ABORT, 'refused'); END")
    conn.commit()
    conn.close()
    proc = run_cli("snapshot", "-r", repo_path, src, "--no-progress", check=False)
    assert proc.returncode != 0
    assert list((repo_path / "snapshots").iterdir()) == []
    conn = sqlite3.connect(repo_path / "catalog.sqlite")
    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    conn.close()
    run_cli("repair", "-r", repo_path, "--rebuild-catalog")
    assert json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout) == []


# --- item 6: filters and an ambiguous latest ----------------------------------------------


def test_latest_is_refused_when_it_could_be_another_disk(tmp_path, repo_path):
    disk, part = tmp_path / "disk.img", tmp_path / "part.img"
    disk.write_bytes(random_bytes(900_000, 1))
    part.write_bytes(random_bytes(300_000, 2))
    d = json.loads(run_cli("snapshot", "-r", repo_path, disk, "--json", "--no-progress", "--tag", "full").stdout)
    p = json.loads(run_cli("snapshot", "-r", repo_path, part, "--json", "--no-progress", "--host", "other").stdout)
    out = tmp_path / "out.img"

    for cmd in (["restore", "-r", repo_path, "latest", out, "--force"],
                ["verify", "-r", repo_path, "latest", disk], ["info", "-r", repo_path, "latest"],
                ["partitions", "-r", repo_path, "latest"]):
        proc = run_cli(*cmd, check=False)
        assert proc.returncode == EXIT_SNAPSHOT, cmd
        line = _error_line(proc)
        assert "latest is ambiguous: 2 sources" in line and str(disk) in line and str(part) in line
        assert "--host/--source" in line
    assert not out.exists()

    run_cli("restore", "-r", repo_path, "latest", "--source", disk, out, "--no-progress")
    assert out.read_bytes() == disk.read_bytes()
    out.unlink()
    run_cli("restore", "-r", repo_path, "latest", "--host", "other", out, "--no-progress")
    assert out.read_bytes() == part.read_bytes()
    out.unlink()
    run_cli("restore", "-r", repo_path, "latest", "--tag", "full", out, "--no-progress")
    assert out.read_bytes() == disk.read_bytes()
    # relative --source is matched as an absolute path
    proc = subprocess.run([sys.executable, "-m", "diskvault", "verify", "-r", repo_path, "latest", "--source", "part.img", "part.img"],
                          cwd=tmp_path, capture_output=True, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    info = json.loads(run_cli("info", "-r", repo_path, "latest", "--source", part, "--json").stdout)
    assert info["id"] == p["id"]
    # an id that does not match the filters is refused, not silently used
    proc = run_cli("restore", "-r", repo_path, p["id"], "--source", disk, tmp_path / "x.img", check=False)
    assert proc.returncode == EXIT_SNAPSHOT and "not of source" in _error_line(proc)
    proc = run_cli("info", "-r", repo_path, "latest", "--host", "nobody", check=False)
    assert proc.returncode == EXIT_SNAPSHOT and "of host nobody" in _error_line(proc)
    # forget by name with a filter; keep rules with --source
    run_cli("forget", "-r", repo_path, "latest", "--host", "other")
    assert [s["id"] for s in json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)] == [d["id"]]
    res = json.loads(run_cli("forget", "-r", repo_path, "--keep-last", "1", "--source", part, "--json").stdout)
    assert res["groups"] == [] and res["removed"] == []


# --- item 9: mounted sources --------------------------------------------------------------


def test_mounted_read_write_device_is_refused(tmp_path, repo_path):
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    img = make_ext4(tmp_path / "fs.img", 24, make_tree(tmp_path / "content", files=4))
    loop = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True, text=True)
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            for source in (dev, img):  # the device, and the image file behind it
                proc = run_cli("snapshot", "-r", repo_path, source, "--no-progress", check=False)
                assert proc.returncode == EXIT_SOURCE_TARGET, proc.stderr
                line = _error_line(proc)
                assert "mounted read-write" in line and str(mnt) in line
                assert "LVM" in line and "fsfreeze" in line and "rescue" in line and "--allow-mounted" in line
            assert _records(repo_path) == []
            rec = json.loads(run_cli("snapshot", "-r", repo_path, dev, "--allow-mounted", "--json",
                                     "--no-progress").stdout)
            assert rec["mounted"] == [{"device": dev, "mountpoint": str(mnt), "mode": "rw"}]
            assert any("mounted read-write" in w for w in rec["warnings"])

            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            proc = run_cli("snapshot", "-r", repo_path, dev, "--json", "--no-progress")
            rec = json.loads(proc.stdout)
            assert rec["mounted"] == [{"device": dev, "mountpoint": str(mnt), "mode": "ro"}]
            assert b"mounted read-only" in proc.stderr
            saved = json.loads(record_bytes(repo_path, rec["id"]))
            assert saved["mounted"][0]["mode"] == "ro"
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
        rec = json.loads(run_cli("snapshot", "-r", repo_path, dev, "--json", "--no-progress").stdout)
        assert rec["mounted"] is None
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        img.unlink()


# --- item 16: streams ---------------------------------------------------------------------


def test_stdin_from_command_is_recorded_only_when_it_succeeds(tmp_path, repo_path):
    proc = run_cli("snapshot", "-r", repo_path, "--no-progress", "--stdin-filename", "vm1.img",
                   "--stdin-from-command", "--", "sh", "-c", "head -c 500000 /dev/urandom; exit 3", check=False)
    assert proc.returncode == EXIT_SOURCE_TARGET
    assert "exited with status 3" in _error_line(proc) and "not saved" in _error_line(proc)
    assert _records(repo_path) == []
    assert json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout) == []

    proc = run_cli("snapshot", "-r", repo_path, "--no-progress", "--stdin-from-command", "--", "/nonexistent/producer",
                   check=False)
    assert proc.returncode == EXIT_SOURCE_TARGET and "cannot run /nonexistent/producer" in _error_line(proc)

    data = random_bytes(400_000, 9)
    src = tmp_path / "vm.raw"
    src.write_bytes(data)
    rec = json.loads(run_cli("snapshot", "-r", repo_path, "--no-progress", "--json", "--stdin-filename", "vm1.img",
                             "--stdin-from-command", "--", "cat", src).stdout)
    assert rec["source"] == "vm1.img" and rec["size"] == len(data)
    out = tmp_path / "out.img"
    run_cli("restore", "-r", repo_path, "latest", "--source", "vm1.img", out, "--no-progress")
    assert out.read_bytes() == data


def test_stdin_filename_keeps_two_vms_apart(tmp_path, repo_path):
    a, b = random_bytes(300_000, 11), random_bytes(300_000, 12)
    ra = json.loads(run_cli("snapshot", "-r", repo_path, "-", "--stdin-filename", "vm-a", "--json", input=a).stdout)
    rb = json.loads(run_cli("snapshot", "-r", repo_path, "-", "--stdin-filename", "vm-b", "--json", input=b).stdout)
    assert (ra["source"], rb["source"]) == ("vm-a", "vm-b")
    res = json.loads(run_cli("forget", "-r", repo_path, "--keep-last", "1", "--json").stdout)
    assert res["removed"] == []
    out = tmp_path / "b.img"
    run_cli("restore", "-r", repo_path, "latest", "--source", "vm-b", out, "--no-progress")
    assert out.read_bytes() == b
    proc = run_cli("snapshot", "-r", repo_path, tmp_path / "b.img", "--stdin-filename", "x", check=False)
    assert proc.returncode == 2


class _GrowOnFirstWindow(Progress):
    """Appends to the source file once its first window is stored: a file that grows while read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.grown = False

    def start(self, total, what):
        pass

    def advance(self, n):
        if not self.grown:
            with open(self.path, "ab") as f:
                f.write(random_bytes(100_000, 99))
            self.grown = True


def test_a_source_that_grows_while_read_is_reported(tmp_path, repo):
    src = tmp_path / "growing.img"
    data = random_bytes(20 << 20, 13)
    src.write_bytes(data)
    rec = take_snapshot(repo, str(src), progress=_GrowOnFirstWindow(src))
    assert rec.size == len(data)
    assert rec.size_changed == {"before": len(data), "after": len(data) + 100_000}
    assert any("changed size" in w for w in rec.warnings)
    saved = json.loads(record_bytes(Path(repo.path), rec.id))
    assert saved["size_changed"] == {"before": len(data), "after": len(data) + 100_000}
    listed = json.loads(run_cli("snapshots", "-r", repo.path, "--json").stdout)
    assert listed[0]["size_changed"] == saved["size_changed"]
    src.unlink()


# --- item 17: a clock set back -----------------------------------------------------------------


def test_clock_set_back_cannot_make_the_newest_backup_look_oldest(tmp_path, repo_path):
    src = tmp_path / "disk.img"
    old, new = random_bytes(400_000, 21), random_bytes(400_000, 22)
    t0 = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
    with Repository.open(str(repo_path), passphrase=secret) as r:
        src.write_bytes(old)
        first = take_snapshot(r, str(src), now=lambda: t0)
        assert first.warnings == []
        src.write_bytes(new)
        second = take_snapshot(r, str(src), now=lambda: t0 - timedelta(days=3))  # the clock was set back
    assert second.seq == first.seq + 1
    assert any("set back" in w for w in second.warnings)
    out = tmp_path / "out.img"
    run_cli("restore", "-r", repo_path, "latest", out, "--no-progress")
    assert out.read_bytes() == new
    res = json.loads(run_cli("forget", "-r", repo_path, "--keep-last", "1", "--dry-run", "--json").stdout)
    assert res["removed"] == [first.id]
    assert [s["id"] for s in res["groups"][0]["keep"]] == [second.id]
    listed = json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)
    assert [(s["id"], s["seq"]) for s in listed] == [(first.id, first.seq), (second.id, second.seq)]
    # the sequence number survives a rebuilt catalog (it is in the record files)
    run_cli("repair", "-r", repo_path, "--rebuild-catalog")
    out.unlink()
    run_cli("restore", "-r", repo_path, "latest", out, "--no-progress")
    assert out.read_bytes() == new


def test_catalog_without_the_new_columns(tmp_path, plain_repo_path):
    """A catalog from before seq/mounted/size_changed/filesystems: read as they are, upgraded by
    a write (an unencrypted repository: catalogs that old come from before encryption)."""
    repo_path = plain_repo_path
    src = tmp_path / "disk.img"
    src.write_bytes(random_bytes(300_000, 31))
    first = json.loads(run_cli("snapshot", "-r", repo_path, src, "--json").stdout)
    conn = sqlite3.connect(repo_path / "catalog.sqlite")
    for col in ("seq", "mounted", "size_changed", "filesystems"):
        conn.execute(f"ALTER TABLE snapshots DROP COLUMN {col}")
    conn.commit()
    conn.close()
    listed = json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)
    assert [(s["id"], s["seq"]) for s in listed] == [(first["id"], 0)]
    src.write_bytes(random_bytes(300_000, 32))
    second = json.loads(run_cli("snapshot", "-r", repo_path, src, "--json").stdout)
    assert second["seq"] == 1
    info = json.loads(run_cli("info", "-r", repo_path, "latest", "--json").stdout)
    assert info["id"] == second["id"]


def test_whole_disk_with_a_mounted_partition_is_refused(tmp_path, repo_path):
    """The usual case: /dev/sda while / is mounted from /dev/sda2."""
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))
    from gpt_image import make_gpt_disk

    disk, _, _, _ = make_gpt_disk(tmp_path)
    loop = subprocess.run(["losetup", "--find", "--show", "--partscan", str(disk)], capture_output=True, text=True)
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        if not os.path.exists(f"{dev}p2"):  # no partition scan here (loop max_part=0): add them as partx does
            subprocess.run(["partx", "-a", dev], check=True, capture_output=True)
        assert os.path.exists(f"{dev}p2")
        subprocess.run(["mount", f"{dev}p2", str(mnt)], check=True)
        try:
            proc = run_cli("snapshot", "-r", repo_path, dev, "--no-progress", check=False)
            assert proc.returncode == EXIT_SOURCE_TARGET
            assert f"({dev}p2 on {mnt})" in _error_line(proc)
            assert _records(repo_path) == []
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
        run_cli("snapshot", "-r", repo_path, dev, "--no-progress")
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        disk.unlink()


@pytest.mark.parametrize("args,words", [
    (["--tag", "g,1"], "cannot hold a comma"),
    (["--tag", "a\nb"], "control characters"),
    (["--host", "h\tx"], "control characters"),
])
def test_tags_and_hosts_forget_could_not_match_are_refused(tmp_path, repo_path, args, words):
    img = tmp_path / "a.img"
    img.write_bytes(random_bytes(100_000, 3))
    proc = run_cli("snapshot", "-r", repo_path, img, *args, check=False)
    assert proc.returncode == 2 and words in proc.stderr.decode() and len(proc.stderr.splitlines()) == 1
    assert not list((repo_path / "snapshots").iterdir())
