"""SIGKILL prune at many random instants: every surviving snapshot still restores
bit-identically, and a following prune finishes the job, leaving no unreferenced pack."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import cli_env, secret
from retention_helpers import assert_no_unreferenced_packs, digest, snapshot_series

from diskvault.ops.retention.forget import forget_snapshots
from diskvault.ops.retention.prune import prune
from diskvault.ops.restore import restore
from diskvault.repository import Repository

STEP_TRIALS = 24
TIMED_TRIALS = 6
HOOK = Path(__file__).resolve().parents[1] / "kill_at_step.py"
PACK_SIZE = "16384"  # small packs: many seal/switch/delete steps to be killed in


def _state(path, original_packs: set[str]) -> str:
    """Which phase the kill interrupted, judged from what it left."""
    with Repository.open(str(path), passphrase=secret) as r:
        catalogued = {p["name"] for p in r.catalog.packs()}
        files = set(r.storage.list("packs"))
    if catalogued == original_packs:
        return "before repack" if files == original_packs else "repack (pack written, not recorded)"
    if original_packs <= catalogued:
        return "repack (switching)"
    return "sweep (old packs dropped)" if files != catalogued else "sweep (files deleted, cleaning up)"


def test_prune_survives_sigkill_anywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("DISKVAULT_PACK_SIZE", PACK_SIZE)
    template = tmp_path / "template"
    from diskvault.repository.chunking import ChunkerParams
    Repository.init(str(template), ChunkerParams.for_average(16 << 10), passphrase=secret).close()
    series = snapshot_series(template, tmp_path / "a.img", count=8, size=2 << 20, changes=32, seed=3)
    with Repository.open(str(template), passphrase=secret) as r:
        forget_snapshots(r, [sid for sid, _ in series[:5]])
        plan = prune(r, max_unused="0", dry_run=True)
        original = {p["name"] for p in r.catalog.packs()}
    assert plan.packs_repacked > 3 and plan.packs_deleted > plan.packs_repacked
    survivors = series[5:]
    env = cli_env(DISKVAULT_PACK_SIZE=PACK_SIZE)
    cmd = [sys.executable, "-m", "diskvault", "prune", "--max-unused", "0", "--json", "-r"]

    def timed(path, extra=()) -> float:
        t = time.monotonic()
        subprocess.run([*cmd[:3], *extra, "-r", str(path)], env=env, check=True, capture_output=True)
        return time.monotonic() - t

    probe = tmp_path / "probe"
    shutil.copytree(template, probe)
    startup = timed(probe, ["unlock"])  # interpreter + imports + opening the repository
    shutil.rmtree(probe)
    shutil.copytree(template, probe)
    full = time.monotonic()
    done = subprocess.run([*cmd, str(probe)], env=env, check=True, capture_output=True)
    full = time.monotonic() - full
    assert json.loads(done.stdout)["packs_repacked"] == plan.packs_repacked

    def check(repo, label: str) -> None:
        with Repository.open(str(repo), passphrase=secret) as r:
            assert [s.id for s in r.snapshots()] == [sid for sid, _ in survivors]
            for sid, want in survivors:
                out = tmp_path / f"{repo.name}-{sid}.img"
                restore(r, r.resolve(sid), str(out))
                assert digest(out) == want, f"{label}: snapshot {sid} differs"
                out.unlink()
            prune(r, max_unused="0")
        assert_no_unreferenced_packs(repo)
        shutil.rmtree(repo)

    rng = random.Random(20261125)
    states: dict[str, int] = {}

    # 1. SIGKILL at random I/O steps (each write, commit, delete, catalog commit, blob read)
    hooked = [sys.executable, str(HOOK), "prune", "--max-unused", "0", "--json", "-r"]
    shutil.rmtree(probe)
    shutil.copytree(template, probe)
    count = subprocess.run(hooked + [str(probe)], env=dict(env, KILL_AT_STEP="-1"), capture_output=True, check=True)
    total = int(count.stderr.decode().rsplit("STEPS ", 1)[1])
    points = [int((i + rng.random()) * total / STEP_TRIALS) for i in range(STEP_TRIALS)]  # stratified
    for trial, k in enumerate(points):
        repo = tmp_path / f"s{trial}"
        shutil.copytree(template, repo)
        proc = subprocess.run(hooked + [str(repo)], env=dict(env, KILL_AT_STEP=str(k)), capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        state = _state(repo, original)
        states[state] = states.get(state, 0) + 1
        check(repo, f"kill at step {k} of {total} ({state})")

    # 2. SIGKILL from outside at random instants of a real run
    lo, hi = 0.9 * startup, full
    for trial in range(TIMED_TRIALS):
        repo = tmp_path / f"t{trial}"
        shutil.copytree(template, repo)
        proc = subprocess.Popen([*cmd, str(repo)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(lo + (hi - lo) * rng.random())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = "timed: " + (_state(repo, original) if proc.returncode == -signal.SIGKILL else "finished")
        states[state] = states.get(state, 0) + 1
        check(repo, f"timed kill {trial} ({state})")
    print(f"\nprune run {full:.2f} s (startup {startup:.2f} s)")
    print(f"{total} I/O steps; kills by state: {states}")
    assert sum(v for k, v in states.items() if not k.endswith("finished")) >= 20
    for phase in ("before repack", "repack", "sweep"):
        assert any(k.startswith(phase) for k in states), f"no kill in phase {phase}: {states}"
