"""Trust at recovery time (issue 11): damage found once is never trusted again and heals;
unreadable snapshot records are reported, recovered where possible, and stop prune; every
documented pack field is checked.

Each test drives the CLI on a real repository and damages it the way disks do (bytes
flipped or files deleted in place), then asserts exit codes, messages and that every
snapshot restores bit-identically.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from helpers import cli_env, random_bytes, run_cli, secret

from diskvault.errors import EXIT_DAMAGED
from diskvault.repository import Repository

KiB = 1 << 10


def cli_json(*args, code: int = 0, env=None) -> dict:
    proc = run_cli(*args, "--json", check=False, env=env)
    assert proc.returncode == code, (proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    return json.loads(proc.stdout)


def snapshot(repo: Path, image: Path, env=None) -> str:
    return cli_json("snapshot", "-r", repo, image, env=env)["id"]


def restores(repo: Path, sid: str, want: bytes, out: Path) -> None:
    if out.exists():
        out.unlink()
    run_cli("restore", "-r", repo, sid, out)
    assert out.read_bytes() == want, f"snapshot {sid[:12]} does not restore bit-identically"
    out.unlink()


def chunk_locations(repo: Path, sid: str):
    """``[(image offset, BlobLocation)]`` of every data chunk of snapshot ``sid``."""
    with Repository.open(str(repo), passphrase=secret) as r:
        snap = r.resolve(sid)
        leaves = [leaf for leaf in r.tree().leaves(bytes.fromhex(snap.tree)) if leaf.id != bytes(32)]
        locs = r.locate({leaf.id for leaf in leaves})
    return [(leaf.offset, locs[leaf.id]) for leaf in leaves]


def flip(path: Path, offset: int, n: int = 1) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


# --- item 3: damaged chunks heal ------------------------------------------------------------


def test_flipped_chunk_is_never_deduplicated_again_and_the_next_snapshot_heals_it(tmp_path, repo_path):
    a = random_bytes(300 * KiB, 1) + random_bytes(300 * KiB, 2)
    b = a[: 300 * KiB] + random_bytes(300 * KiB, 3)  # shares its first half with a
    image = tmp_path / "disk.img"
    image.write_bytes(a)
    sa = snapshot(repo_path, image)
    image.write_bytes(b)
    sb = snapshot(repo_path, image)
    offset, loc = chunk_locations(repo_path, sa)[0]  # a chunk both snapshots need
    assert offset == 0 and loc.id in {c.id for _, c in chunk_locations(repo_path, sb)}
    flip(repo_path / loc.pack, loc.offset + loc.stored_len // 2, 4)

    rep = cli_json("check", "-r", repo_path, "--read-data", code=EXIT_DAMAGED)
    assert {s["id"] for s in rep["affected_snapshots"]} == {sa, sb}
    # a check without --read-data still knows: the damage is recorded in the catalog
    rep = cli_json("check", "-r", repo_path, code=EXIT_DAMAGED)
    assert [e["kind"] for e in rep["errors"]] == ["blob-known-damaged"] and rep["errors"][0]["blob"] == loc.id.hex()
    # repair keeps the knowledge and does not call the repository sound
    proc = run_cli("repair", "-r", repo_path, check=False)
    assert proc.returncode == EXIT_DAMAGED, proc.stderr.decode()
    assert b"1 blob known to be damaged" in proc.stderr

    sc = snapshot(repo_path, image)  # the intact source again: the chunk is stored anew
    assert cli_json("check", "-r", repo_path, "--read-data")["status"] == "sound"
    assert cli_json("check", "-r", repo_path)["errors"] == []
    out = tmp_path / "out.img"
    for sid, want in ((sa, a), (sb, b), (sc, b)):
        restores(repo_path, sid, want, out)
    with Repository.open(str(repo_path), passphrase=secret) as r:
        assert r.catalog.damaged() == {}
        assert r.locate([loc.id])[loc.id].pack != loc.pack  # the row points at the new copy
    run_cli("prune", "-r", repo_path, "--max-unused", "0")  # the damaged bytes are unused: reclaimed
    assert not any(loc.pack in str(p) for p in repo_path.rglob("*.pack"))
    assert cli_json("check", "-r", repo_path, "--read-data")["status"] == "sound"
    for sid, want in ((sa, a), (sb, b), (sc, b)):
        restores(repo_path, sid, want, out)


def test_a_damaged_chunk_found_by_restore_is_not_trusted_by_the_next_snapshot(tmp_path, repo_path):
    data = random_bytes(400 * KiB, 4)
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    sa = snapshot(repo_path, image)
    _, loc = chunk_locations(repo_path, sa)[1]
    flip(repo_path / loc.pack, loc.offset + 10)
    out = tmp_path / "out.img"
    proc = run_cli("restore", "-r", repo_path, sa, out, check=False)
    assert proc.returncode == EXIT_DAMAGED and not out.exists()
    sb = snapshot(repo_path, image)
    assert cli_json("check", "-r", repo_path, "--read-data")["status"] == "sound"
    for sid in (sa, sb):
        restores(repo_path, sid, data, out)


def test_damage_heals_in_a_catalog_made_before_the_damaged_table(tmp_path, repo_path):
    data = random_bytes(400 * KiB, 8)
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    sa = snapshot(repo_path, image)
    conn = sqlite3.connect(repo_path / "catalog.sqlite")
    conn.execute("DROP TABLE damaged")
    conn.commit()
    conn.close()
    assert cli_json("check", "-r", repo_path)["status"] == "sound"  # read: an absent table is empty
    _, loc = chunk_locations(repo_path, sa)[2]
    flip(repo_path / loc.pack, loc.offset + 7)
    cli_json("check", "-r", repo_path, "--read-data", code=EXIT_DAMAGED)  # creates the table
    sb = snapshot(repo_path, image)
    assert cli_json("check", "-r", repo_path, "--read-data")["status"] == "sound"
    out = tmp_path / "out.img"
    for sid in (sa, sb):
        restores(repo_path, sid, data, out)


def test_deleted_pack_heals_with_the_next_snapshot(tmp_path, repo_path):
    env = cli_env(DISKVAULT_PACK_SIZE="65536")
    data = random_bytes(700 * KiB, 5)
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    sa = snapshot(repo_path, image, env)
    _, loc = chunk_locations(repo_path, sa)[3]
    (repo_path / loc.pack).unlink()

    rep = cli_json("check", "-r", repo_path, code=EXIT_DAMAGED)
    assert [e["kind"] for e in rep["errors"]] == ["pack-missing"]
    sb = snapshot(repo_path, image, env)
    rep = cli_json("check", "-r", repo_path, "--read-data")
    assert rep["status"] == "sound" and rep["warnings"] == []  # the missing pack is forgotten
    out = tmp_path / "out.img"
    for sid in (sa, sb):
        restores(repo_path, sid, data, out)
    run_cli("prune", "-r", repo_path, "--max-unused", "0")
    assert cli_json("check", "-r", repo_path, "--read-data")["status"] == "sound"
    for sid in (sa, sb):
        restores(repo_path, sid, data, out)


def test_damaged_tree_node_heals_with_the_next_snapshot(tmp_path, repo_path):
    data = random_bytes(800 * KiB, 6)
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    sa = snapshot(repo_path, image)
    with Repository.open(str(repo_path), passphrase=secret) as r:
        root = bytes.fromhex(r.resolve(sa).tree)
        loc = r.locate([root])[root]
    flip(repo_path / loc.pack, loc.offset + 3)
    cli_json("check", "-r", repo_path, "--read-data", code=EXIT_DAMAGED)
    sb = snapshot(repo_path, image)
    assert cli_json("check", "-r", repo_path, "--read-data")["status"] == "sound"
    out = tmp_path / "out.img"
    for sid in (sa, sb):
        restores(repo_path, sid, data, out)


def test_a_snapshot_that_finds_its_parent_tree_damaged_stores_the_tree_again(tmp_path, repo_path):
    """No check ran: the snapshot itself reads the parent's tree (for cutting hints), finds
    its root damaged, and does not deduplicate against it."""
    data = random_bytes(600 * KiB, 9)
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    sa = snapshot(repo_path, image)
    with Repository.open(str(repo_path), passphrase=secret) as r:
        root = bytes.fromhex(r.resolve(sa).tree)
        loc = r.locate([root])[root]
    flip(repo_path / loc.pack, loc.offset + 5)
    sb = snapshot(repo_path, image)
    assert cli_json("check", "-r", repo_path, "--read-data")["status"] == "sound"
    out = tmp_path / "out.img"
    for sid in (sa, sb):
        restores(repo_path, sid, data, out)


# --- item 12 and item 5's tail: unreadable snapshot records ------------------------------------


@pytest.fixture
def recorded(tmp_path):
    """An unencrypted repository: these tests edit its (plaintext) records and packs by hand;
    an encrypted one's are authenticated (tests/security/test_encryption.py)."""
    repo = tmp_path / "repo"
    run_cli("init", "-r", repo, "--encryption", "none")
    data = random_bytes(500 * KiB, 7)
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    sid = snapshot(repo, image)
    record = repo / "snapshots" / f"{sid}.json"
    return repo, sid, record, data


def pack_files(repo: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted((repo / "packs").rglob("*.pack"))}


def test_record_with_a_flipped_byte_in_its_tree_root_is_reported_and_stops_prune(recorded):
    repo, sid, record, _data = recorded
    text = record.read_bytes()
    flip(record, text.index(b'"tree": "') + 20)  # inside the root's id: the root cannot be found
    (repo / "catalog.sqlite").unlink()

    proc = run_cli("repair", "-r", repo, check=False)
    assert proc.returncode == EXIT_DAMAGED, proc.stdout.decode() + proc.stderr.decode()
    assert f"snapshot record snapshots/{sid}.json cannot be read (it is not UTF-8 text)".encode() in proc.stderr
    rep = cli_json("check", "-r", repo, "--read-data", code=EXIT_DAMAGED)
    assert [e["kind"] for e in rep["errors"]] == ["record-unreadable"] and sid in rep["errors"][0]["message"]

    before = pack_files(repo)
    for args in (("prune",), ("prune", "--dry-run")):
        proc = run_cli(*args, "-r", repo, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == EXIT_DAMAGED and err.count("\n") == 1, err
        assert f"snapshot record snapshots/{sid}.json" in err and "prune deletes nothing" in err
    assert pack_files(repo) == before and record.exists()


def test_record_with_an_intact_tree_root_is_recovered_by_repair(recorded, tmp_path):
    repo, sid, record, data = recorded
    flip(record, 0)  # "{" becomes a byte that is not UTF-8: the file no longer parses
    (repo / "catalog.sqlite").unlink()
    res = cli_json("repair", "-r", repo)
    assert res["snapshots"] == 1 and res["unreadable_records"] == []
    assert [r["id"] for r in res["recovered_records"]] == [sid]
    assert res["recovered_records"][0]["stood_in"] == []  # every field read back
    assert cli_json("check", "-r", repo, "--read-data")["status"] == "sound"
    restores(repo, sid, data, tmp_path / "out.img")
    run_cli("prune", "-r", repo)
    restores(repo, sid, data, tmp_path / "out.img")


def test_unreadable_record_with_a_catalog_row_is_rewritten_from_the_row(recorded, tmp_path):
    repo, sid, record, data = recorded
    record.write_bytes(record.read_bytes()[:40])  # cut short
    assert cli_json("check", "-r", repo, code=EXIT_DAMAGED)["errors"][0]["kind"] == "record-unreadable"
    res = cli_json("repair", "-r", repo)
    assert res["recovered_records"] == [{"id": sid, "reason": res["recovered_records"][0]["reason"],
                                         "from": "catalog", "stood_in": []}]
    assert cli_json("check", "-r", repo)["status"] == "sound"
    restores(repo, sid, data, tmp_path / "out.img")


@pytest.mark.parametrize("body", [
    b'{"id": "%(id)s", "tree": not json',
    b'{"id": "%(id)s", "time": "2026-01-01T00:00:00.000000Z", "host": "h", "source": "\\udcff\\udcfe", '
    b'"size": 1, "tags": [], "tree": "%(bad)s"}',
], ids=["invalid-json", "non-utf8-source"])
def test_repair_reports_and_skips_a_record_it_cannot_read(recorded, body):
    repo, sid, _record, _data = recorded
    other = "ab" * 16
    (repo / "snapshots" / f"{other}.json").write_bytes(body % {b"id": other.encode(), b"bad": b"cd" * 32})
    proc = run_cli("repair", "-r", repo, "--json", check=False)
    assert proc.returncode == EXIT_DAMAGED, proc.stderr.decode()
    res = json.loads(proc.stdout)
    assert [r["record"] for r in res["unreadable_records"]] == [f"snapshots/{other}.json"]
    assert res["snapshots"] == 1
    (repo / "snapshots" / f"{other}.json").unlink()
    assert cli_json("check", "-r", repo)["status"] == "sound"


def test_record_with_a_non_utf8_source_is_recovered_with_a_stand_in(recorded, tmp_path):
    repo, sid, record, data = recorded
    d = json.loads(record.read_bytes())
    d["source"] = "/dev/\udcff"
    other = "ef" * 16
    d["id"] = other
    (repo / "snapshots" / f"{other}.json").write_text(json.dumps(d))  # \udcff escaped: valid JSON, not UTF-8 text
    res = cli_json("repair", "-r", repo)
    rec = next(r for r in res["recovered_records"] if r["id"] == other)
    assert rec["stood_in"] == ["source"] and "source" in rec["reason"]
    snaps = cli_json("snapshots", "-r", repo)
    assert {s["id"]: s["source"] for s in snaps}[other] == "unknown"
    restores(repo, other, data, tmp_path / "out.img")


# --- item 14: reserved and flag bytes of packs --------------------------------------------


@pytest.mark.parametrize("where,what", [
    (8, "is encrypted, unlike its repository"),  # u64 flags after magic[6] and u16 version
    (-44, "reserved trailer word"),  # u32 reserved after the u32 entry count of the 48-byte footer
])
def test_pack_with_a_reserved_field_set_fails_check(recorded, where, what):
    repo, _sid, _record, _data = recorded
    pack = next((repo / "packs").rglob("*.pack"))
    with open(pack, "r+b") as f:
        f.seek(where, os.SEEK_SET if where >= 0 else os.SEEK_END)
        f.write(b"\x01")
    rep = cli_json("check", "-r", repo, "--read-data", code=EXIT_DAMAGED)
    assert rep["errors"][0]["kind"] == "pack-trailer" and what in rep["errors"][0]["message"]


def test_a_flipped_bit_in_a_record_field_is_found_and_repaired_from_the_catalog(tmp_path, plain_repo_path):
    """A bit flipped inside a field keeps the JSON valid ("seq": 1 -> "seq": 9): the record's
    checksum finds it, check reports it, repair rewrites it from the catalog, and latest
    stays the newest snapshot (it was the oldest after a repair that trusted the record)."""
    img = tmp_path / "a.img"
    ids = []
    for i in range(3):
        img.write_bytes(random_bytes(200_000, 40 + i))
        ids.append(json.loads(run_cli("snapshot", "-r", plain_repo_path, img, "--json").stdout)["id"])
    first = plain_repo_path / "snapshots" / f"{ids[0]}.json"
    text = first.read_text()
    assert '"seq": 1,' in text
    first.write_text(text.replace('"seq": 1,', '"seq": 9,'))
    errors = cli_json("check", "-r", plain_repo_path, code=EXIT_DAMAGED)["errors"]
    assert [e["kind"] for e in errors] == ["record-unreadable"] and "checksum" in errors[0]["message"]
    res = cli_json("repair", "-r", plain_repo_path)
    assert [r["id"] for r in res["recovered_records"]] == [ids[0]]
    assert '"seq": 1,' in first.read_text()
    assert cli_json("info", "-r", plain_repo_path, "latest")["id"] == ids[2]
    assert cli_json("check", "-r", plain_repo_path)["status"] == "sound"


def test_a_record_rewritten_with_a_matching_checksum_loses_to_the_catalog(tmp_path, plain_repo_path):
    """Someone edits a record's size and recomputes its (unkeyed) checksum: check reports
    the disagreement, prune deletes nothing, repair rewrites the record from the catalog."""
    from diskvault.repository.record import record_checksum

    img = tmp_path / "a.img"
    img.write_bytes(random_bytes(300_000, 51))
    sid = json.loads(run_cli("snapshot", "-r", plain_repo_path, img, "--json").stdout)["id"]
    path = plain_repo_path / "snapshots" / f"{sid}.json"
    original = path.read_bytes()
    rec = json.loads(original)
    rec["size"] = 99
    rec["checksum"] = record_checksum(rec)
    path.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    assert [e["kind"] for e in cli_json("check", "-r", plain_repo_path, code=EXIT_DAMAGED)["errors"]] == ["record-mismatch"]
    proc = run_cli("prune", "-r", plain_repo_path, check=False)
    assert proc.returncode == EXIT_DAMAGED and b"does not match the catalog" in proc.stderr
    res = cli_json("repair", "-r", plain_repo_path)
    assert [r["id"] for r in res["recovered_records"]] == [sid] and path.read_bytes() == original
    assert cli_json("check", "-r", plain_repo_path)["status"] == "sound"
