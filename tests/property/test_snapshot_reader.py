"""SnapshotReader: any range reads back the image's bytes; extents mark exactly the zero runs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from helpers import random_bytes, secret

from diskvault.ops.snapshot import take_snapshot
from diskvault.ops.access.snapshot_reader import ReadContext, SnapshotReader, Stream


@pytest.fixture(scope="module")
def image_and_reader(tmp_path_factory):
    from diskvault.repository.chunking import ChunkerParams
    from diskvault.repository import Repository

    tmp = tmp_path_factory.mktemp("reader")
    data = random_bytes(700_000, 3) + bytes(2 << 20) + random_bytes(300_000, 4) + bytes(100_000) + random_bytes(5, 5)
    img = tmp / "img"
    img.write_bytes(data)
    repo = Repository.init(str(tmp / "repo"), ChunkerParams.for_average(16 << 10), passphrase=secret)
    snap = take_snapshot(repo, str(img))
    ctx = ReadContext(repo, cache_bytes=256 << 10)  # small: eviction happens
    yield data, SnapshotReader(ctx, snap)
    ctx.close()
    repo.close()


@settings(max_examples=60)
@given(st.data())
def test_random_reads(image_and_reader, data):
    image, reader = image_and_reader
    off = data.draw(st.integers(0, len(image) + 10))
    n = data.draw(st.integers(0, 400_000))
    assert reader.read(off, n) == image[off : off + n]


def test_sequential_reads_with_prefetch(image_and_reader):
    image, reader = image_and_reader
    stream = Stream()
    out = bytearray()
    for off in range(0, len(image), 65536):
        out += reader.read(off, 65536, stream)
    assert out == image


def test_extents(image_and_reader):
    image, reader = image_and_reader
    ext = reader.extents()
    assert sum(n for _, n, _ in ext) == len(image)
    zero_runs = [(o, n) for o, n, z in ext if z]
    # zero runs are found per chunk: the 2 MiB run is reported, less its partial edge chunks
    assert any(700_000 <= o and o + n <= 700_000 + (2 << 20) and n > (2 << 20) - (256 << 10) for o, n in zero_runs)
    for o, n, z in ext:
        if z:
            assert image[o : o + n] == bytes(n)
    part = reader.extents(800_000, 900_000)
    assert part == [(800_000, 100_000, True)]
