"""forget and prune end to end through the CLI: space is reclaimed, leftovers of crashes
are removed, data is verified before it is copied, nothing live is ever deleted."""

from __future__ import annotations

import json
import os
import shutil

from helpers import cli_env, random_bytes, run_cli, secret
from retention_helpers import assert_no_unreferenced_packs, digest, repo_bytes, snapshot_series

from diskvault.repository.chunking import ChunkerParams
from diskvault.errors import EXIT_DAMAGED, EXIT_SNAPSHOT, EXIT_USAGE
from diskvault.ops.progress import NoProgress
from diskvault.ops.retention.prune import mark
from diskvault.repository.pack import PackWriter, new_pack_name
from diskvault.repository import Repository


def test_acceptance_30_snapshots_forget_all_but_last(tmp_path, repo_path):
    """30 snapshots of a 4 MiB image changing a little each time; forget all but the last and
    prune: the repository is at most 5 % larger than a fresh one holding only that snapshot."""
    image = tmp_path / "disk.img"
    series = snapshot_series(repo_path, image, count=30, size=4 << 20, changes=3, seed=7)
    before = repo_bytes(repo_path)
    res = json.loads(run_cli("forget", "-r", repo_path, "--keep-last", "1", "--prune", "--json").stdout)
    assert res["removed"] and len(res["removed"]) == 29 and res["kept"] == 1
    assert res["groups"][0]["keep"][0]["id"] == series[-1][0]
    pr = res["prune"]
    assert pr["snapshots"] == 1 and pr["chunks_removed"] > 0 and pr["bytes_reclaimed"] > 0
    assert sorted(os.listdir(repo_path / "snapshots")) == [f"{series[-1][0]}.json"]

    fresh = tmp_path / "fresh"
    Repository.init(str(fresh), ChunkerParams.for_average(16 << 10), passphrase=secret).close()
    run_cli("snapshot", "-r", fresh, image)
    after, fresh_size = repo_bytes(repo_path), repo_bytes(fresh)
    print(f"\nrepository: {before} bytes with 30 snapshots, {after} after prune, fresh {fresh_size} "
          f"({after / fresh_size:.3f}x); prune {pr}")
    assert after <= 1.05 * fresh_size

    run_cli("restore", "-r", repo_path, "latest", tmp_path / "out.img")
    assert digest(tmp_path / "out.img") == series[-1][1]
    assert_no_unreferenced_packs(repo_path)


def test_forget_named_snapshots_and_usage_errors(tmp_path, repo_path):
    series = snapshot_series(repo_path, tmp_path / "a.img", count=3, size=300_000, changes=2)
    res = json.loads(run_cli("forget", "-r", repo_path, series[0][0][:10], series[1][0], "--json").stdout)
    assert res["removed"] == [series[0][0], series[1][0]] and res["kept"] == 1
    assert sorted(os.listdir(repo_path / "snapshots")) == [f"{series[2][0]}.json"]
    left = json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)
    assert [s["id"] for s in left] == [series[2][0]]
    assert run_cli("forget", "-r", repo_path, "abcdef", check=False).returncode == EXIT_SNAPSHOT
    assert run_cli("forget", "-r", repo_path, check=False).returncode == EXIT_USAGE
    assert run_cli("forget", "-r", repo_path, "latest", "--keep-last", "1", check=False).returncode == EXIT_USAGE
    assert run_cli("forget", "-r", repo_path, "--keep-last", "-2", check=False).returncode == EXIT_USAGE
    assert run_cli("forget", "-r", repo_path, "--keep-within", "3q", check=False).returncode == EXIT_USAGE
    assert run_cli("prune", "-r", repo_path, "--max-unused", "lots", check=False).returncode == EXIT_USAGE


def test_forget_dry_run_reports_reasons_and_changes_nothing(tmp_path, repo_path):
    series = snapshot_series(repo_path, tmp_path / "a.img", count=6, size=200_000, changes=2,
                             tags=lambda i: ["golden"] if i == 0 else ["nightly"])
    res = json.loads(run_cli("forget", "-r", repo_path, "--keep-last", "2", "--keep-tag", "golden",
                             "--dry-run", "--json").stdout)
    (group,) = res["groups"]
    keep = {s["id"]: s["reasons"] for s in group["keep"]}
    assert keep == {series[5][0]: ["last snapshot"], series[4][0]: ["last snapshot"], series[0][0]: ["tagged golden"]}
    assert {s["id"] for s in group["remove"]} == {series[i][0] for i in (1, 2, 3)}
    assert res["dry_run"] and len(os.listdir(repo_path / "snapshots")) == 6
    text = run_cli("forget", "-r", repo_path, "--keep-daily", "1", "--tag", "nightly", "--dry-run").stderr.decode()
    assert "would remove 4" in text and "daily snapshot" in text and series[0][0][:12] not in text
    assert len(json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)) == 6


def test_prune_removes_leftovers_of_interrupted_commands(tmp_path, repo_path):
    series = snapshot_series(repo_path, tmp_path / "a.img", count=4, size=400_000, changes=4)
    with Repository.open(str(repo_path), passphrase=secret) as r:
        w = PackWriter(r.storage, r.crypto)  # a sealed pack the catalog never recorded (crash before add_pack)
        w.add(b"\x01" * 32, 1, 0, b"orphan data", 11)
        w.seal()
        orphan_pack = repo_path / w.name
        r.storage.create(new_pack_name()).write(b"partial")  # .tmp- file, never committed
    orphan_record = repo_path / "snapshots" / f"{series[0][0]}.json"
    body = orphan_record.read_bytes()
    run_cli("forget", "-r", repo_path, series[0][0], series[1][0])
    orphan_record.write_bytes(body)  # a forget interrupted after the catalog row went, before the file

    dry = json.loads(run_cli("prune", "-r", repo_path, "--max-unused", "0", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["orphan_packs_removed"] == 1 and dry["orphan_records_removed"] == 1
    assert orphan_pack.exists() and orphan_record.exists()

    res = json.loads(run_cli("prune", "-r", repo_path, "--max-unused", "0", "--json").stdout)
    assert res["orphan_packs_removed"] == 1 and res["orphan_records_removed"] == 1 and res["tmp_files_removed"] == 1
    assert res["packs_deleted"] >= 1 and res["bytes_reclaimed"] > 0
    assert res["bytes_after"] == dry["bytes_after"]  # the dry run predicted the outcome
    assert not orphan_pack.exists() and not orphan_record.exists()
    assert_no_unreferenced_packs(repo_path)
    for sid, want in series[2:]:
        run_cli("restore", "-r", repo_path, sid, tmp_path / f"{sid}.img")
        assert digest(tmp_path / f"{sid}.img") == want
    again = json.loads(run_cli("prune", "-r", repo_path, "--max-unused", "0", "--json").stdout)
    assert again["packs_deleted"] == 0 and again["bytes_reclaimed"] == 0


def test_repack_small_merges_packs(tmp_path, repo_path):
    env = cli_env(DISKVAULT_PACK_SIZE="65536")
    image = tmp_path / "a.img"
    image.write_bytes(random_bytes(600_000, 5))
    run_cli("snapshot", "-r", repo_path, image, env=env)
    with Repository.open(str(repo_path), passphrase=secret) as r:
        packs = len(r.catalog.packs())
    assert packs > 5
    res = json.loads(run_cli("prune", "-r", repo_path, "--repack-small", "--json").stdout)
    assert res["packs_repacked"] == packs and res["packs_written"] == 1 and res["chunks_removed"] == 0
    with Repository.open(str(repo_path), passphrase=secret) as r:
        assert len(r.catalog.packs()) == 1
    run_cli("restore", "-r", repo_path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == image.read_bytes()
    assert_no_unreferenced_packs(repo_path)


def test_prune_never_copies_damaged_data_and_deletes_nothing(tmp_path, repo_path):
    series = snapshot_series(repo_path, tmp_path / "a.img", count=3, size=300_000, changes=3)
    damaged = tmp_path / "damaged"
    shutil.copytree(repo_path, damaged)
    run_cli("forget", "-r", damaged, series[0][0])
    with Repository.open(str(damaged), passphrase=secret) as r:
        first = r.catalog.packs()[0]["name"]  # holds live and dead chunks: will be repacked
        live = mark(r, NoProgress())
        loc = next(l for l in r.locate(live).values() if l.pack == first and l.type == 1)
    with open(damaged / first, "r+b") as f:
        f.seek(loc.offset + 4)
        f.write(b"\xff\xfe\xfd")
    files = sorted(str(p) for p in damaged.rglob("*.pack"))
    proc = run_cli("prune", "-r", damaged, "--max-unused", "0", check=False)
    assert proc.returncode == EXIT_DAMAGED, proc.stderr
    assert b"damaged" in proc.stderr and proc.stderr.count(b"\n") == 1
    assert files == sorted(str(p) for p in damaged.rglob("*.pack"))  # nothing deleted

    with Repository.open(str(damaged), passphrase=secret) as r:  # a live chunk missing from the catalog: refuse
        r.catalog.conn.execute("DELETE FROM blobs WHERE id=?", (loc.id,))
    proc = run_cli("prune", "-r", damaged, check=False)
    assert proc.returncode == EXIT_DAMAGED and b"not in the catalog" in proc.stderr
    assert files == sorted(str(p) for p in damaged.rglob("*.pack"))


def test_forget_everything_then_prune_leaves_no_data(tmp_path, repo_path):
    series = snapshot_series(repo_path, tmp_path / "a.img", count=3, size=200_000, changes=2)
    run_cli("forget", "-r", repo_path, *[sid for sid, _ in series])
    res = json.loads(run_cli("prune", "-r", repo_path, "--json").stdout)
    assert res["snapshots"] == 0 and res["live_blobs"] == 0 and res["bytes_after"] == 0
    assert list((repo_path / "packs").rglob("*.pack")) == [] and os.listdir(repo_path / "snapshots") == []
    assert run_cli("restore", "-r", repo_path, series[0][0], tmp_path / "x.img", check=False).returncode == EXIT_SNAPSHOT
    with Repository.open(str(repo_path), passphrase=secret) as r:
        assert r.catalog.blob_totals()["chunks"] == 0
