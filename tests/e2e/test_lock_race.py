"""snapshot and prune started together: one waits or fails cleanly naming the lock holder,
and nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import blake3
from helpers import cli_env, random_bytes, secret
from retention_helpers import assert_no_unreferenced_packs, digest, snapshot_series

from diskvault.errors import EXIT_LOCKED
from diskvault.repository import Repository


def test_snapshot_and_prune_started_together(tmp_path, repo_path):
    series = snapshot_series(repo_path, tmp_path / "old.img", count=4, size=2 << 20, changes=30)
    with Repository.open(str(repo_path), passphrase=secret) as r:
        from diskvault.ops.retention.forget import forget_snapshots
        forget_snapshots(r, [sid for sid, _ in series[:3]])
    env = cli_env()
    outcomes = []
    taken = {series[3][0]: series[3][1]}
    for round_ in range(4):
        image = tmp_path / f"new{round_}.img"
        image.write_bytes(random_bytes(6 << 20, 50 + round_))
        base = [sys.executable, "-m", "diskvault"]
        snap = subprocess.Popen([*base, "snapshot", "-r", str(repo_path), str(image), "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        prune = subprocess.Popen([*base, "prune", "-r", str(repo_path), "--max-unused", "0", "--json"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        results = {}
        for name, proc in (("snapshot", snap), ("prune", prune)):
            out, err = proc.communicate(timeout=120)
            results[name] = (proc.returncode, out, err.decode())
            assert proc.returncode in (0, EXIT_LOCKED), f"{name}: {err.decode()}"
            if proc.returncode == EXIT_LOCKED:
                other = "prune" if name == "snapshot" else "snapshot"
                assert f"lock of '{other}' (pid {(prune if name == 'snapshot' else snap).pid} on" in err.decode()
                assert err.decode().count("\n") == 1
        assert results["snapshot"][0] == 0 or results["prune"][0] == 0  # never both refused
        if results["snapshot"][0] == 0:
            taken[json.loads(results["snapshot"][1])["id"]] = blake3.blake3(image.read_bytes()).hexdigest()
        outcomes.append((results["snapshot"][0], results["prune"][0]))
    print(f"\n(snapshot, prune) exit codes per round: {outcomes}")
    with Repository.open(str(repo_path), passphrase=secret) as r:
        assert {s.id for s in r.snapshots()} == set(taken)
    from diskvault.ops.restore import restore
    with Repository.open(str(repo_path), passphrase=secret) as r:
        for sid, want in taken.items():
            restore(r, r.resolve(sid), str(tmp_path / "out.img"), force=True)
            assert digest(tmp_path / "out.img") == want
    subprocess.run([sys.executable, "-m", "diskvault", "prune", "-r", str(repo_path), "--max-unused", "0"],
                   env=env, check=True, capture_output=True)
    assert_no_unreferenced_packs(repo_path)
