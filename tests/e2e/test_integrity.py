"""check / verify / repair / restore --skip-damaged against real corruption of a repository.

Each test builds a small repository with two snapshots: A (pack 1) and B, which shares
A's data and adds its own in pack 2 (with its tree nodes). Then it damages the repository
the way disks and people do, and asserts that check names the damage and the right
snapshots, that restore never writes wrong bytes silently, and that repair recovers
whatever data survives.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import pack_entries, random_bytes, run_cli, secret

from diskvault.repository.chunking import ChunkerParams
from diskvault.repository.hashing import ZERO_ID
from diskvault.ops.integrity.check import check
from diskvault.ops.snapshot import take_snapshot
from diskvault.repository.pack import FOOTER, TYPE_CHUNK
from diskvault.repository import Repository


def cli_json(*args, code: int = 0) -> dict:
    proc = run_cli(*args, "--json", check=False)
    assert proc.returncode == code, (proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    return json.loads(proc.stdout)


@pytest.fixture
def world(tmp_path: Path) -> SimpleNamespace:
    repo = tmp_path / "repo"
    a = tmp_path / "a.img"
    b = tmp_path / "b.img"
    a.write_bytes(random_bytes(600_000, 1) + bytes(200_000) + random_bytes(300_000, 2))
    b.write_bytes(a.read_bytes() + random_bytes(400_000, 3))
    r = Repository.init(str(repo), ChunkerParams.for_average(16 << 10), passphrase=secret)
    with r:
        sa = take_snapshot(r, str(a))
        sb = take_snapshot(r, str(b))
        packs = [str(repo / p["name"]) for p in r.catalog.packs()]
    assert len(packs) == 2
    return SimpleNamespace(tmp=tmp_path, repo=repo, a=a, b=b, A=sa.id, B=sb.id, pack1=Path(packs[0]), pack2=Path(packs[1]))


def leaves_of(repo: Path, sid: str):
    with Repository.open(str(repo), passphrase=secret) as r:
        snap = r.resolve(sid)
        return list(r.tree().leaves(bytes.fromhex(snap.tree)))


def first_chunk(pack: Path, repo: Path):
    entries = pack_entries(repo, pack)
    return next(e for e in entries if e.type == TYPE_CHUNK)


def affected_ids(report: dict) -> set[str]:
    return {s["id"] for s in report["affected_snapshots"]}


def restores_identically(w, sid: str, original: Path, name: str) -> None:
    out = w.tmp / name
    run_cli("restore", "-r", w.repo, sid, out)
    assert out.read_bytes() == original.read_bytes()


def test_sound_repository_checks_clean(world):
    w = world
    rep = cli_json("check", "-r", w.repo, "--read-data")
    assert rep["status"] == "sound" and rep["errors"] == []
    assert rep["read_data"]["packs"] == 2 and rep["read_data"]["blobs"] == rep["blobs"]
    assert cli_json("verify", "-r", w.repo, w.A, w.a)["identical"] is True


def test_flipped_byte_in_a_chunk(world):
    w = world
    e = first_chunk(w.pack1, w.repo)
    data = bytearray(w.pack1.read_bytes())
    data[e.offset + e.stored_len // 2] ^= 0x40
    w.pack1.write_bytes(bytes(data))
    # the structure is intact; reading the data finds the damage and names both snapshots
    assert run_cli("check", "-r", w.repo, check=False).returncode == 0
    rep = cli_json("check", "-r", w.repo, "--read-data", code=8)
    [err] = rep["errors"]
    assert err["kind"] == "blob-damaged" and err["blob"] == e.id.hex()
    expect = [[lf.offset, lf.length] for lf in leaves_of(w.repo, w.B) if lf.id == e.id]
    assert {s["id"]: s["ranges"] for s in err["snapshots"]} == {w.A: expect, w.B: expect}
    assert affected_ids(rep) == {w.A, w.B}
    # default restore stops with an error naming the offset, and leaves no file behind
    out = w.tmp / "out.img"
    proc = run_cli("restore", "-r", w.repo, w.B, out, check=False)
    assert proc.returncode == 8 and f"byte {expect[0][0]}" in proc.stderr.decode()
    assert not out.exists()
    # --skip-damaged: zeros for the bad chunk, everything else exact, the range reported
    res = cli_json("restore", "-r", w.repo, w.B, out, "--skip-damaged", "--map", w.tmp / "map", code=8)
    assert [[u["offset"], u["length"]] for u in res["unrestored"]] == expect
    want = bytearray(w.b.read_bytes())
    for off, n in expect:
        want[off : off + n] = bytes(n)
    assert out.read_bytes() == bytes(want)
    assert f"0x{expect[0][0]:08X}  0x{expect[0][1]:08X}  -" in (w.tmp / "map").read_text()
    # verify of the salvaged image against the original source shows exactly that range
    v = cli_json("verify", "-r", w.repo, w.B, out, code=8)  # the snapshot itself is damaged there
    assert [[u["offset"], u["length"]] for u in v["unreadable"]] == expect and v["differing"] == []


def test_truncated_pack_is_detected_and_salvaged(world):
    w = world
    size = w.pack2.stat().st_size
    with open(w.pack2, "r+b") as f:  # cut off the trailer: every payload survives
        f.truncate(size - FOOTER.size - 10)
    rep = cli_json("check", "-r", w.repo, code=8)
    assert {e["kind"] for e in rep["errors"]} >= {"pack-size", "pack-trailer"}
    assert affected_ids(rep) == {w.B}  # A uses nothing from pack 2
    restores_identically(w, w.A, w.a, "a.out")
    fixed = cli_json("repair", "-r", w.repo)
    assert fixed["salvaged_blobs"] > 0 and fixed["unrecoverable"] == [] and fixed["status_after"] == "sound"
    restores_identically(w, w.B, w.b, "b.out")
    assert cli_json("check", "-r", w.repo, "--read-data")["status"] == "sound"


def test_pack_truncated_in_half_loses_only_b(world):
    w = world
    with open(w.pack2, "r+b") as f:
        f.truncate(w.pack2.stat().st_size // 2)
    rep = cli_json("check", "-r", w.repo, "--read-data", code=8)
    assert affected_ids(rep) == {w.B}
    fixed = cli_json("repair", "-r", w.repo, code=8)
    assert [u["id"] for u in fixed["unrecoverable"]] == [w.B]
    restores_identically(w, w.A, w.a, "a.out")
    out = w.tmp / "b.out"
    res = cli_json("restore", "-r", w.repo, w.B, out, "--skip-damaged", code=8)
    assert res["unrestored_bytes"] > 0  # B's root tree node was in the lost half


def test_deleted_pack(world):
    w = world
    w.pack1.unlink()
    rep = cli_json("check", "-r", w.repo, code=8)
    assert rep["errors"][0]["kind"] == "pack-missing"
    assert affected_ids(rep) == {w.A, w.B}
    proc = run_cli("restore", "-r", w.repo, w.A, w.tmp / "x", check=False)
    assert proc.returncode == 8 and "missing" in proc.stderr.decode()
    fixed = cli_json("repair", "-r", w.repo, code=8)
    assert {u["id"] for u in fixed["unrecoverable"]} == {w.A, w.B}
    assert cli_json("check", "-r", w.repo, code=8)["status"] == "damaged"


def test_deleted_second_pack_spares_a(world):
    w = world
    w.pack2.unlink()
    rep = cli_json("check", "-r", w.repo, code=8)
    assert affected_ids(rep) == {w.B}
    B = next(s for s in rep["affected_snapshots"] if s["id"] == w.B)
    assert B["ranges"] == [[0, w.b.stat().st_size]]  # its root tree node is gone


def test_zeroed_trailer(world):
    w = world
    size = w.pack1.stat().st_size
    with open(w.pack1, "r+b") as f:
        f.seek(size - FOOTER.size)
        f.write(bytes(FOOTER.size))
    rep = cli_json("check", "-r", w.repo, code=8)
    assert [e["kind"] for e in rep["errors"]] == ["pack-trailer"]
    assert affected_ids(rep) == {w.A, w.B}
    restores_identically(w, w.A, w.a, "a.out")  # the catalog still locates every chunk
    fixed = cli_json("repair", "-r", w.repo)
    assert fixed["salvaged_blobs"] == rep["errors"][0]["blobs"] and fixed["status_after"] == "sound"
    w.pack1.unlink()  # the damaged pack is no longer needed
    assert cli_json("check", "-r", w.repo, "--read-data")["status"] == "sound"
    restores_identically(w, w.A, w.a, "a2.out")
    restores_identically(w, w.B, w.b, "b.out")


@pytest.mark.parametrize("how", ["delete", "garbage"])
def test_lost_catalog_is_rebuilt(world, how):
    w = world
    cat = w.repo / "catalog.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cat}{suffix}").unlink(missing_ok=True)
    if how == "garbage":
        cat.write_bytes(random_bytes(8192, 9))
    proc = run_cli("check", "-r", w.repo, check=False)
    assert proc.returncode == 3 and "repair" in proc.stderr.decode()
    fixed = cli_json("repair", "-r", w.repo)
    assert fixed["old_catalog"] != "used" and fixed["snapshots"] == 2 and fixed["status_after"] == "sound"
    assert cli_json("check", "-r", w.repo, "--read-data")["status"] == "sound"
    restores_identically(w, w.A, w.a, "a.out")
    restores_identically(w, w.B, w.b, "b.out")
    snaps = cli_json("snapshots", "-r", w.repo)
    assert sorted(s["id"] for s in snaps) == sorted([w.A, w.B])


def shift_catalog_offset(w):
    """Corrupt one catalog row: the first chunk of pack1 is said to start 7 bytes later."""
    e = first_chunk(w.pack1, w.repo)
    conn = sqlite3.connect(w.repo / "catalog.sqlite")
    conn.execute("UPDATE blobs SET offset = offset + 7 WHERE id = ?", (e.id,))
    conn.commit()
    conn.close()
    return e


def test_corrupt_catalog_row(world):
    w = world
    e = shift_catalog_offset(w)
    rep = cli_json("check", "-r", w.repo, code=8)
    [err] = rep["errors"]
    assert err["kind"] == "catalog-row" and err["blob"] == e.id.hex()
    assert affected_ids(rep) == {w.A, w.B}
    out = w.tmp / "out.img"
    assert run_cli("restore", "-r", w.repo, w.A, out, check=False).returncode == 8
    assert not out.exists()
    fixed = cli_json("repair", "-r", w.repo)
    assert fixed["changed_rows"] == 1 and fixed["status_after"] == "sound"
    restores_identically(w, w.A, w.a, "a.out")


def test_missing_record_is_rewritten(world):
    w = world
    (w.repo / "snapshots" / f"{w.A}.json").unlink()
    rep = cli_json("check", "-r", w.repo, code=8)
    assert rep["errors"][0]["kind"] == "record-missing"
    fixed = cli_json("repair", "-r", w.repo)
    assert fixed["records_written"] == 1 and fixed["status_after"] == "sound"
    assert (w.repo / "snapshots" / f"{w.A}.json").exists()


def test_repair_of_sound_repository_changes_nothing(world):
    w = world
    fixed = cli_json("repair", "-r", w.repo)
    assert fixed["changed_rows"] == 0 and fixed["salvaged_blobs"] == 0 and fixed["old_catalog"] == "used"
    fixed = cli_json("repair", "-r", w.repo, "--rebuild-catalog")
    assert fixed["status_after"] == "sound" and fixed["snapshots"] == 2
    restores_identically(w, w.B, w.b, "b.out")


def test_orphan_pack_is_a_warning(world):
    w = world
    conn = sqlite3.connect(w.repo / "catalog.sqlite")
    conn.execute("PRAGMA foreign_keys=ON")
    pid = conn.execute("SELECT id FROM packs ORDER BY id DESC LIMIT 1").fetchone()[0]
    conn.execute("DELETE FROM blobs WHERE pack=?", (pid,))
    conn.execute("DELETE FROM packs WHERE id=?", (pid,))
    conn.commit()
    conn.close()
    rep = cli_json("check", "-r", w.repo, code=8)  # B's chunks are now uncatalogued...
    assert [x["kind"] for x in rep["warnings"]] == ["orphan-pack"]  # ...and pack 2 is an orphan
    assert affected_ids(rep) == {w.B}
    assert cli_json("repair", "-r", w.repo)["status_after"] == "sound"  # repair indexes it again
    restores_identically(w, w.B, w.b, "b.out")


def test_verify_reports_differing_ranges(world):
    w = world
    img = bytearray(w.b.read_bytes())
    img[700_000] ^= 1  # inside the zero run
    img[10_000] ^= 1  # inside data
    changed = w.tmp / "changed.img"
    changed.write_bytes(bytes(img))
    v = cli_json("verify", "-r", w.repo, w.B, changed, code=9)
    # each flipped byte's 4 KiB block, cut short where a chunk ends inside it (the rest of the
    # block lies in the next chunk, which is identical): boundaries depend on the repository's key
    for r, flipped in zip(v["differing"], (10_000, 700_000), strict=True):
        block = flipped // 4096 * 4096
        assert block <= r["offset"] <= flipped < r["offset"] + r["length"] <= block + 4096, v["differing"]
    assert cli_json("verify", "-r", w.repo, w.A, w.b, code=9)["differing"] == [
        {"offset": w.a.stat().st_size, "length": 400_000}]
    proc = run_cli("verify", "-r", w.repo, w.B, "-", input=w.b.read_bytes())
    assert "identical" in proc.stderr.decode()


def test_check_api_on_repo_fixture(repo):
    # the structural check also backs tests/consistency.py; an empty repository is sound
    assert check(repo).sound
    assert ZERO_ID == bytes(32)


def test_read_data_subset_cli(world):
    w = world
    reads = [cli_json("check", "-r", w.repo, "--read-data-subset", f"{k}/3")["read_data"] for k in (1, 2, 3)]
    assert sum(r["packs"] for r in reads) == 2 and {r["subset"] for r in reads} == {"1/3", "2/3", "3/3"}
    proc = run_cli("check", "-r", w.repo, "--read-data-subset", "7/3", check=False)
    assert proc.returncode == 2 and "n/N" in proc.stderr.decode()


def test_interrupted_repair_leaves_the_old_catalog(world, monkeypatch):
    import diskvault.ops.integrity.repair as repair_mod

    w = world
    e = shift_catalog_offset(w)

    rename = os.rename

    def killed(src, dst, *args, **kwargs):  # only the catalog's swap: the lock file must still be written
        if os.fspath(dst).endswith("catalog.sqlite"):
            raise KeyboardInterrupt
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(repair_mod.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        repair_mod.repair(str(w.repo), passphrase=secret)
    monkeypatch.undo()
    with Repository.open(str(w.repo), passphrase=secret) as r:  # the old (still wrong) catalog, readable as before
        assert [f.kind for f in check(r).errors] == ["catalog-row"]
        assert r.storage.clean_temporary() == 1  # the unfinished new catalog
    assert repair_mod.repair(str(w.repo), passphrase=secret).status_after == "sound"
    restores_identically(w, w.A, w.a, "a.out")
