"""Issue 11, items 10-11: every figure the CLI prints is right, every error is one line, and
every number a user types (options, environment variables, config.json) is range-checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import diskvault
from diskvault import errors
from helpers import ROOT, cli_env, random_bytes, run_cli, tool

MiB = 1 << 20


def one_line_error(*args, code: int, match: str, env: dict | None = None) -> str:
    """Run the CLI expecting exit ``code`` and exactly one stderr line containing ``match``."""
    proc = run_cli(*args, check=False, env=env)
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("diskvault: error: "), err
    assert "Traceback" not in err and "╭" not in err and match in err, err
    return lines[0]


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "a.img"
    p.write_bytes(random_bytes(300_000, 5))
    return p


# --- usage errors and --version -------------------------------------------------------
@pytest.mark.parametrize("args, match, command", [
    (["forget", "-r", "R", "--bogus"], "No such option: --bogus", "forget"),
    (["restore", "-r", "R"], "Missing argument", "restore"),
    (["init", "-r", "R", "--chunk-size", "3K"], "power of two", "init"),
    (["check", "-r", "R", "--read-data-subset"], "requires an argument", "check"),
    (["bogus"], "No such command", ""),
])
def test_usage_errors_are_one_line(tmp_path, args, match, command):
    args = [str(tmp_path / "R") if a == "R" else a for a in args]
    line = one_line_error(*args, code=errors.EXIT_USAGE, match=match)
    assert not (tmp_path / "R").exists()
    assert line.endswith(f"see {' '.join(['diskvault', command]).strip()} --help"), line


def test_version():
    proc = run_cli("--version")
    assert proc.stdout.decode() == f"diskvault {diskvault.__version__}\n" and not proc.stderr


def test_help_and_bare_command_still_work():
    assert b"Usage" in run_cli("snapshot", "--help").stdout
    proc = run_cli(check=False)
    assert proc.returncode == errors.EXIT_USAGE and b"Commands" in proc.stdout


# --- figures ----------------------------------------------------------------------------
SINGULAR_AS_PLURAL = re.compile(r"(?<![\d.,])1 (?:[a-z-]+ )?[a-z]+s\b")


def test_counts_of_one_are_singular(repo_path, image, tmp_path):
    """'1 ranges', '1 errors', 'delete 1 packs': never; every count goes through plural()."""
    sid = json.loads(run_cli("snapshot", "-r", repo_path, image, "--json").stdout)["id"]
    changed = tmp_path / "b.img"
    data = bytearray(image.read_bytes())
    data[1000] ^= 1
    changed.write_bytes(data)
    outputs = [
        run_cli("check", "-r", repo_path).stderr.decode(),
        run_cli("verify", "-r", repo_path, sid, changed, check=False).stderr.decode(),
        run_cli("forget", "-r", repo_path, sid).stderr.decode(),
        run_cli("prune", "-r", repo_path).stderr.decode(),
    ]
    text = "\n".join(outputs)
    assert "differ in 1 range:" in text and "forgot 1 snapshot," in text and "delete 1 pack " in text, text
    assert not SINGULAR_AS_PLURAL.findall(text), text


def test_info_compression_ratio_is_unique_over_stored(repo_path, image):
    run_cli("snapshot", "-r", repo_path, image, "--compression", "zstd")
    info = json.loads(run_cli("info", "-r", repo_path, "--json").stdout)
    assert info["compression_ratio"] == round(info["unique_bytes"] / info["stored_bytes"], 3), info
    assert info["dedup_ratio"] == round(info["data_bytes"] / info["unique_bytes"], 3), info
    text = run_cli("info", "-r", repo_path).stdout.decode()
    assert re.search(r"^chunker +4K/16K/64K min/avg/max$", text, re.M), text
    assert "{" not in text, text


def test_forget_with_prune_does_not_ask_to_run_prune(repo_path, image, tmp_path):
    run_cli("snapshot", "-r", repo_path, image)
    image.write_bytes(random_bytes(300_000, 6))  # the same source, changed
    run_cli("snapshot", "-r", repo_path, image)
    out = run_cli("forget", "-r", repo_path, "--keep-last", "1", "--prune")
    text = out.stderr.decode()
    assert "run diskvault prune" not in text and "prune:" in text and "forgot 1 snapshot" in text, text
    assert "run diskvault prune" in run_cli("forget", "-r", repo_path, "latest").stderr.decode()


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
def test_source_that_shrank_names_its_size(repo_path, tmp_path):
    """A file that says 24 MiB but ends at 10 MiB (a real FUSE file system): the error names
    the size the source had, not the end of the 8 MiB read window (16 MiB)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fs = subprocess.Popen([sys.executable, str(ROOT / "tests" / "shrinking_fuse.py"), str(mnt), str(24 * MiB), str(10 * MiB)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            assert fs.poll() is None, fs.stderr.read().decode()
            assert time.monotonic() < deadline, "the FUSE file system did not mount"
            time.sleep(0.05)
        line = one_line_error("snapshot", "-r", repo_path, mnt / "disk.img", code=errors.EXIT_SOURCE_TARGET,
                              match=f"ended at byte {10 * MiB}, before its size {24 * MiB} when opened")
        assert str(16 * MiB) not in line
    finally:
        subprocess.run([tool("fusermount3"), "-u", str(mnt)], capture_output=True)
        try:
            fs.wait(10)
        except subprocess.TimeoutExpired:
            fs.kill()
            fs.wait()


def test_bare_ntfs_image_is_an_empty_dos_table_as_documented(tmp_path):
    """mkntfs writes a boot sector with the 0x55AA signature and no partition entries; like
    sfdisk --dump, that is an empty dos table; the output says there are no partitions and
    docs/cli.md says why."""
    img = tmp_path / "ntfs.img"
    subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
    subprocess.run([tool("mkntfs"), "-F", "-f", "-q", str(img)], check=True, capture_output=True)
    sfdisk = subprocess.run([tool("sfdisk"), "--dump", str(img)], capture_output=True, text=True, check=True).stdout
    table = json.loads(run_cli("partitions", "--source", img, "--json").stdout)
    assert "label: dos" in sfdisk and table["label"] == "dos" and table["partitions"] == []
    out = run_cli("partitions", "--source", img).stdout.decode()
    assert out.splitlines()[-1] == "no partitions (an empty table, or the boot sector of a bare FAT or NTFS file system)"
    docs = (ROOT / "docs" / "cli.md").read_text()
    assert "empty `dos` table" in docs and "no partition table" in docs


def test_stdin_and_a_fully_allocated_file_cut_the_same(repo_path, tmp_path):
    """Why stdin stores some new data after the same image was saved as a sparse file
    (docs/cli.md): a sparse file is cut extent by extent, stdin as one stream; without
    holes the two cut identically and stdin stores nothing new."""
    dense = tmp_path / "dense.img"
    dense.write_bytes(random_bytes(3 * MiB, 8) + bytes(2 * MiB) + random_bytes(3 * MiB, 9))
    run_cli("snapshot", "-r", repo_path, dense)
    rec = json.loads(run_cli("snapshot", "-r", repo_path, "-", "--json", input=dense.read_bytes()).stdout)
    assert rec["new_bytes"] == 0 and rec["new_chunks"] == 0, rec
    sparse = tmp_path / "sparse.img"
    with open(sparse, "wb") as f:  # the same bytes with a 2 MiB hole: two data extents
        f.write(random_bytes(3 * MiB, 8))
        f.seek(5 * MiB)
        f.write(random_bytes(3 * MiB, 9))
    first = json.loads(run_cli("snapshot", "-r", repo_path, sparse, "--json").stdout)
    assert first["zero_bytes"] == 2 * MiB  # the hole; the first data extent ends where it starts
    assert 1 <= first["new_chunks"] <= 4, first  # only chunks at the two extent edges differ


# --- range checks -------------------------------------------------------------------------
@pytest.mark.parametrize("args, env, match", [
    (["init", "--chunk-size", "0"], {}, "--chunk-size"),
    (["init", "--chunk-size", "-64K"], {}, "--chunk-size"),
    (["init", "--chunk-size", "8M"], {}, "power of two"),
    (["forget", "--keep-last", "-2"], {}, "--keep-last"),
    (["forget", "--keep-daily", "x"], {}, "--keep-daily"),
    (["forget", "--keep-within", "-1d"], {}, "--keep-within"),
    (["forget", "--keep-last", "1", "--max-unused", "101%"], {}, "--max-unused"),
    (["prune", "--max-unused", "-5%"], {}, "--max-unused"),
    (["prune", "--max-unused", "-1M"], {}, "--max-unused"),
    (["check", "--read-data-subset", "0/3"], {}, "--read-data-subset"),
    (["check", "--read-data-subset", "4/3"], {}, "--read-data-subset"),
    (["check", "--read-data-subset", "0%"], {}, "--read-data-subset"),
    (["check", "--read-data-subset", "150%"], {}, "--read-data-subset"),
    (["restore", "latest", "out.img", "--partition", "0"], {}, "--partition"),
    (["serve", "--bind", "127.0.0.1:65536"], {}, "port"),
    (["serve", "--bind", "127.0.0.1:-1"], {}, "port"),
    (["info"], {"DISKVAULT_LOCK_WAIT": "-1"}, "DISKVAULT_LOCK_WAIT"),
    (["info"], {"DISKVAULT_LOCK_WAIT": "soon"}, "DISKVAULT_LOCK_WAIT"),
    (["info"], {"DISKVAULT_LOCK_WAIT": "nan"}, "DISKVAULT_LOCK_WAIT"),
    (["prune"], {"DISKVAULT_PACK_SIZE": "100"}, "DISKVAULT_PACK_SIZE"),
    (["prune"], {"DISKVAULT_PACK_SIZE": "big"}, "DISKVAULT_PACK_SIZE"),
    (["prune"], {"DISKVAULT_PACK_SIZE": str(1 << 40)}, "DISKVAULT_PACK_SIZE"),
])
def test_numbers_out_of_range_exit_2(tmp_path, monkeypatch, repo_path, image, args, env, match):
    run_cli("snapshot", "-r", repo_path, image)
    leftover = repo_path / "packs" / "left.tmp-0001"  # what an interrupted write leaves; prune would remove it
    leftover.write_bytes(b"x")
    before = sorted(p.name for p in repo_path.rglob("*") if "catalog" not in p.name and "locks" not in str(p))
    cmd, *rest = args
    repo = tmp_path / "new" if cmd == "init" else repo_path
    monkeypatch.chdir(tmp_path)
    one_line_error(cmd, "-r", repo, *rest, code=errors.EXIT_USAGE, match=match, env=cli_env(**env))
    assert not (tmp_path / "new").exists() and not (tmp_path / "out.img").exists()
    assert sorted(p.name for p in repo_path.rglob("*") if "catalog" not in p.name and "locks" not in str(p)) == before
    leftover.unlink()


def test_huge_keep_within_keeps_everything(repo_path, image):
    run_cli("snapshot", "-r", repo_path, image)
    res = json.loads(run_cli("forget", "-r", repo_path, "--keep-within", "99999999999y", "--json").stdout)
    assert res["removed"] == [] and res["kept"] == 1


@pytest.mark.parametrize("chunker", [
    {"min_size": 65536, "avg_size": 16384, "max_size": 4096},  # min > avg > max
    {"min_size": 0, "avg_size": 0, "max_size": 0},
    {"min_size": 4096, "avg_size": 20000, "max_size": 65536},  # not a power of two
    {"min_size": 4096, "avg_size": 16384, "max_size": 16384},  # not what init writes
    {"min_size": 4096, "avg_size": "16K", "max_size": 65536},
    {"avg_size": 16384},
    None,
])
def test_impossible_config_exits_3(repo_path, image, chunker):
    run_cli("snapshot", "-r", repo_path, image)
    path = repo_path / "config.json"
    good = path.read_bytes()
    cfg = json.loads(good)
    cfg["chunker"] = chunker
    path.write_text(json.dumps(cfg))
    try:
        for command in (["snapshots"], ["check"], ["snapshot", image], ["repair"]):
            one_line_error(command[0], "-r", repo_path, *command[1:], code=errors.EXIT_REPOSITORY,
                           match="config.json is damaged")
    finally:
        path.write_bytes(good)
