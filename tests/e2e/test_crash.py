"""kill -9 at random moments of a snapshot: the repository stays consistent and every
earlier snapshot restores bit-identically. Ctrl-C: exit 130, nothing half-written."""

import json
import random
import signal
import subprocess
import sys
import time

from consistency import assert_consistent
from helpers import cli_env, random_bytes, run_cli


def snapshots(repo):
    return json.loads(run_cli("snapshots", "-r", repo, "--json").stdout)


def test_sigkill_during_snapshot(tmp_path, repo_path):
    first = tmp_path / "first.img"
    first.write_bytes(random_bytes(8 << 20, 1) + bytes(4 << 20))
    run_cli("snapshot", "-r", repo_path, first)
    trial_img = tmp_path / "trial.img"
    trial_img.write_bytes(random_bytes(48 << 20, 2))
    t0 = time.monotonic()
    run_cli("snapshot", "-r", repo_path, trial_img, "--tag", "complete")
    full = time.monotonic() - t0
    before = [s["id"] for s in snapshots(repo_path)]
    rng = random.Random(1234)
    for trial in range(10):
        trial_img.write_bytes(random_bytes(48 << 20, 100 + trial))
        proc = subprocess.Popen([sys.executable, "-m", "diskvault", "snapshot", "-r", str(repo_path), str(trial_img)],
                                env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, full))  # from start-up to near the end
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_consistent(repo_path)
        ids = [s["id"] for s in snapshots(repo_path)]
        assert ids[: len(before)] == before  # nothing earlier lost (a finished trial may add one)
    out = tmp_path / "out.img"
    run_cli("restore", "-r", repo_path, before[0], out)
    assert out.read_bytes() == first.read_bytes()
    run_cli("restore", "-r", repo_path, "latest:complete", out, "--force")
    assert out.read_bytes() == random_bytes(48 << 20, 2)


def test_sigint_during_snapshot_exits_130_and_cleans_up(tmp_path, repo_path):
    """The source is a pipe we feed ourselves, so the signal surely lands mid-snapshot."""
    proc = subprocess.Popen([sys.executable, "-m", "diskvault", "snapshot", "-r", str(repo_path), "-"],
                            env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for i in range(6):
        proc.stdin.write(random_bytes(8 << 20, i))  # enough to seal a few buffers, not a whole pack
    proc.stdin.flush()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
    assert not [p for p in repo_path.rglob("*") if ".tmp-" in p.name]
    assert snapshots(repo_path) == []


def test_init_removes_what_a_killed_init_left_beside_the_repository(tmp_path):
    """SIGKILL during init leaves PATH.tmp-XXXXXXXX (the repository is built there and
    renamed into place); the next init of PATH removes it once it is stale, never a fresh
    one (a running init's) nor anything else named alike."""
    import os

    stale, fresh, other = tmp_path / "repo.tmp-0123abcd", tmp_path / "repo.tmp-89abcdef", tmp_path / "repo.tmp-notmine"
    for d in (stale, fresh, other):
        (d / "keys").mkdir(parents=True)
        (d / "keys" / "0123456789abcdef.json").write_text("{}")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    run_cli("init", "-r", tmp_path / "repo")
    assert not stale.exists() and fresh.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "repo.tmp-89abcdef", "repo.tmp-notmine"]
