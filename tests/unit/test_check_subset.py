"""Read-data subsets: n/N slices partition the packs; N% windows rotate over all of them."""

from __future__ import annotations

import pytest
from helpers import random_bytes

import diskvault.repository.writer as writer
from diskvault.ops.integrity.check import check, parse_subset
from diskvault.ops.integrity.damage import merge
from diskvault.ops.snapshot import take_snapshot


@pytest.fixture
def many_packs(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "TARGET_PACK_SIZE", 64 << 10)
    img = tmp_path / "a.img"
    img.write_bytes(random_bytes(2 << 20, 5))
    take_snapshot(repo, str(img))
    names = [p["name"] for p in repo.catalog.packs()]
    assert len(names) >= 20
    return repo, names


def test_slices_partition_the_packs(many_packs):
    repo, names = many_packs
    slices = [parse_subset(f"{k}/4") for k in range(1, 5)]
    for name in names:
        assert sum(s.contains(name) for s in slices) == 1
    counts = [check(repo, subset=f"{k}/4").read_data["packs"] for k in range(1, 5)]
    assert sum(counts) == len(names) and all(counts)


def test_percent_windows_rotate_over_everything(many_packs):
    repo, names = many_packs
    seen = 0
    for _ in range(4):
        start = int(repo.catalog.meta().get("read_data_subset_next", "0"))
        sub = parse_subset("25%", start)
        seen += sum(sub.contains(n) for n in names)
        rep = check(repo, subset="25%")
        assert rep.sound and rep.read_data["subset"] == "25%"
    assert seen == len(names)
    assert int(repo.catalog.meta()["read_data_subset_next"]) == 0  # back at the start


@pytest.mark.parametrize("spec", ["0%", "101%", "0/3", "4/3", "abc", "1/0"])
def test_bad_subset_specs(spec):
    with pytest.raises(ValueError):
        parse_subset(spec)


def test_merge_ranges():
    assert merge([(10, 5), (0, 10), (20, 1), (21, 0), (18, 4)]) == [[0, 15], [18, 4]]
