"""`diskvault partitions` lists GPT (sgdisk) and MBR (sfdisk) tables exactly as `sfdisk --dump`."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from gpt_image import make_gpt_disk

from helpers import run_cli, tool


def sfdisk_dump(image) -> tuple[dict, list[dict]]:
    text = subprocess.run([tool("sfdisk"), "--dump", str(image)], capture_output=True, text=True, check=True).stdout
    header, parts = {}, []
    for line in text.splitlines():
        m = re.match(r"^\S+?(\d+) : (.*)$", line)
        if m:
            fields = {"number": int(m.group(1)), "bootable": False}
            for item in re.findall(r'(\w[\w-]*)(?:=\s*("[^"]*"|[^,]*))?', m.group(2)):
                key, value = item
                if key == "bootable":
                    fields["bootable"] = True
                elif value:
                    fields[key] = value.strip().strip('"')
            parts.append(fields)
        elif ": " in line:
            k, v = line.split(": ", 1)
            header[k] = v
    return header, parts


def ours(repo_path, snapshot="latest") -> dict:
    return json.loads(run_cli("partitions", "-r", repo_path, snapshot, "--json").stdout)


def test_gpt_made_with_sgdisk(tmp_path, repo_path):
    disk, _, _, _ = make_gpt_disk(tmp_path)
    run_cli("snapshot", "-r", repo_path, disk)
    header, parts = sfdisk_dump(disk)
    got = ours(repo_path)
    assert got["label"] == header["label"] == "gpt"
    assert got["id"] == header["label-id"]
    assert got["first_lba"] == int(header["first-lba"]) and got["last_lba"] == int(header["last-lba"])
    want = [(p["number"], int(p["start"]), int(p["size"]), p["type"], p["uuid"], p["name"]) for p in parts]
    have = [(p["number"], p["start"], p["size"], p["type_id"], p["uuid"], p["name"]) for p in got["partitions"]]
    assert have == want and len(have) == 3
    assert [p["type"] for p in got["partitions"]] == ["EFI System", "Linux filesystem", "Microsoft basic data"]
    # the same table read straight from the image
    direct = json.loads(run_cli("partitions", "--source", disk, "--json").stdout)
    assert direct["partitions"] == got["partitions"]


@pytest.mark.parametrize("ext_type", ["5", "f"])
def test_mbr_made_with_sfdisk(tmp_path, repo_path, ext_type):
    disk = tmp_path / "mbr.img"
    subprocess.run(["truncate", "-s", "32M", str(disk)], check=True)
    script = (
        "label: dos\nlabel-id: 0x1234abcd\n"
        "start=2048, size=8192, type=83, bootable\n"
        f"start=10240, size=40000, type={ext_type}\n"
        "start=12288, size=4096, type=82\n"
        "start=18432, size=8192, type=7\n"
        "start=28672, size=2048, type=c\n"
        "start=51200, size=10240, type=8e\n"
    )
    subprocess.run([tool("sfdisk"), "-q", str(disk)], input=script, text=True, check=True, capture_output=True)
    run_cli("snapshot", "-r", repo_path, disk)
    header, parts = sfdisk_dump(disk)
    got = ours(repo_path)
    assert got["label"] == header["label"] == "dos"
    assert got["id"] == header["label-id"]
    want = [(p["number"], int(p["start"]), int(p["size"]), p["type"], p["bootable"]) for p in parts]
    have = [(p["number"], p["start"], p["size"], p["type_id"], p["bootable"]) for p in got["partitions"]]
    assert have == want
    assert [p["number"] for p in got["partitions"]] == [1, 2, 3, 5, 6, 7]
    assert got["partitions"][0]["type"] == "Linux"


def test_human_output_and_bare_filesystem(tmp_path, repo_path):
    disk, _, _, _ = make_gpt_disk(tmp_path)
    run_cli("snapshot", "-r", repo_path, disk)
    text = run_cli("partitions", "-r", repo_path, "latest").stdout.decode()
    assert "gpt partition table" in text and "Linux filesystem" in text and "root" in text
    bare = tmp_path / "bare.img"
    bare.write_bytes(bytes(1 << 20))
    snap = json.loads(run_cli("snapshot", "-r", repo_path, bare, "--json").stdout)
    assert ours(repo_path, snap["id"])["label"] == "none"
    # two sources now: latest needs --source (a snapshot name then makes --source a filter)
    assert run_cli("partitions", "-r", repo_path, check=False).returncode == 4
    assert "no partition table" in run_cli("partitions", "-r", repo_path, "latest", "--source", bare).stdout.decode()
