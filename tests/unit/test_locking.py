"""Repository locks: conflicts, holder named, stale detection, waiting, unlock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import random_bytes, run_cli

from diskvault.repository import locking
from diskvault.errors import EXIT_LOCKED, RepositoryLocked


def write_lock(repo_path, name, **fields):
    body = {"kind": "exclusive", "command": "prune", "pid": os.getpid(), "host": socket.gethostname(),
            "start": locking._proc_start(os.getpid()), "time": time.time()}
    body.update(fields)
    (repo_path / "locks" / name).write_text(json.dumps(body))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def lock_files(repo_path):
    return sorted(n for n in os.listdir(repo_path / "locks") if n.endswith(".json"))


def test_shared_locks_coexist_and_exclusive_conflicts(repo_path):
    a = locking.acquire(str(repo_path), "shared", "snapshot", wait=0)
    b = locking.acquire(str(repo_path), "shared", "restore", wait=0)
    with pytest.raises(RepositoryLocked) as err:
        locking.acquire(str(repo_path), "exclusive", "prune", wait=0)
    assert f"pid {os.getpid()}" in str(err.value) and "snapshot" in str(err.value) and "unlock" in str(err.value)
    assert err.value.exit_code == EXIT_LOCKED
    a.release()
    b.release()
    assert lock_files(repo_path) == []
    with locking.locked(str(repo_path), "exclusive", "prune", wait=0):
        with pytest.raises(RepositoryLocked, match="exclusive lock of 'prune'"):
            locking.acquire(str(repo_path), "shared", "snapshot", wait=0)
    assert lock_files(repo_path) == []


def test_lock_of_a_dead_process_is_removed_when_locking(repo_path):
    write_lock(repo_path, "dead.json", pid=dead_pid(), start=0)
    assert locking.stale_reason(locking.list_locks(str(repo_path))[0]).startswith("process")
    with locking.locked(str(repo_path), "exclusive", "prune", wait=0):
        assert "dead.json" not in lock_files(repo_path)


def test_reused_pid_is_detected_by_start_time(repo_path):
    write_lock(repo_path, "reused.json", start=locking._proc_start(os.getpid()) + 12345)
    assert locking.stale_reason(locking.list_locks(str(repo_path))[0]) is not None
    locking.acquire(str(repo_path), "exclusive", "prune", wait=0).release()


def test_old_lock_of_another_host_is_ignored_and_unlock_removes_it(plain_repo_path):
    repo_path = plain_repo_path  # its locks are written here in plaintext, as an unencrypted repository has them
    write_lock(repo_path, "old.json", host="elsewhere", pid=1, time=time.time() - 2 * locking.STALE_AFTER)
    with locking.locked(str(repo_path), "exclusive", "prune", wait=0):
        assert "old.json" in lock_files(repo_path)  # not ours to delete without asking
    proc = run_cli("unlock", "-r", repo_path, "--json")
    res = json.loads(proc.stdout)
    assert [lock["name"] for lock in res["removed"]] == ["old.json"] and "not refreshed" in res["removed"][0]["reason"]
    assert lock_files(repo_path) == []


def test_live_lock_blocks_and_only_unlock_all_removes_it(plain_repo_path):
    repo_path = plain_repo_path  # its locks are written here in plaintext, as an unencrypted repository has them
    write_lock(repo_path, "live.json", host="elsewhere", pid=4242)
    with pytest.raises(RepositoryLocked, match="pid 4242 on elsewhere"):
        locking.acquire(str(repo_path), "shared", "restore", wait=0)
    out = run_cli("unlock", "-r", repo_path).stderr.decode()
    assert "kept exclusive lock of 'prune' (pid 4242 on elsewhere)" in out
    assert lock_files(repo_path) == ["live.json"]
    res = json.loads(run_cli("unlock", "-r", repo_path, "--all", "--json").stdout)
    assert res["removed"][0]["reason"] == "forced (--all)"
    assert lock_files(repo_path) == []


def test_waiting_for_a_lock(repo_path):
    held = locking.acquire(str(repo_path), "exclusive", "prune", wait=0)
    threading.Timer(0.5, held.release).start()
    started = time.monotonic()
    with locking.locked(str(repo_path), "shared", "snapshot", wait=10):
        assert time.monotonic() - started >= 0.4


def test_cli_snapshot_fails_cleanly_naming_the_holder_then_waits(tmp_path, plain_repo_path):
    repo_path = plain_repo_path  # its locks are written here in plaintext, as an unencrypted repository has them
    img = tmp_path / "a.img"
    img.write_bytes(random_bytes(200_000, 3))
    held = locking.acquire(str(repo_path), "exclusive", "prune", wait=0)
    proc = run_cli("snapshot", "-r", repo_path, img, check=False)
    assert proc.returncode == EXIT_LOCKED
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and f"exclusive lock of 'prune' (pid {os.getpid()} on {socket.gethostname()}" in err
    assert json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout) == []
    for cmd in (["info", "-r", repo_path], ["check", "-r", repo_path], ["repair", "-r", repo_path],
                ["prune", "-r", repo_path], ["forget", "-r", repo_path, "--keep-last", "1"]):
        assert run_cli(*cmd, check=False).returncode == EXIT_LOCKED
    threading.Timer(1.0, held.release).start()
    from helpers import cli_env
    run_cli("snapshot", "-r", repo_path, img, env=cli_env(DISKVAULT_LOCK_WAIT="20"))
    with locking.locked(str(repo_path), "exclusive", "prune", wait=0):
        assert run_cli("restore", "-r", repo_path, "latest", tmp_path / "x.img", check=False).returncode == EXIT_LOCKED
        assert run_cli("verify", "-r", repo_path, "latest", img, check=False).returncode == EXIT_LOCKED
    assert not (tmp_path / "x.img").exists()
    run_cli("restore", "-r", repo_path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()
    assert lock_files(repo_path) == []
