"""A damaged chunk is never served: NBD answers EIO, FUSE fails the read, both keep running."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from access_fixtures import fuse_mount, nbd_server

from helpers import random_bytes, run_cli, tool, secret

from diskvault.ops.access.snapshot_reader import ReadContext, SnapshotReader
from diskvault.repository import Repository

MiB = 1 << 20


@pytest.fixture
def damaged(tmp_path, repo_path):
    img = tmp_path / "d.img"
    img.write_bytes(random_bytes(4 * MiB, 11))
    run_cli("snapshot", "-r", repo_path, img)
    with Repository.open(str(repo_path), passphrase=secret) as r:
        snap = r.resolve("latest")
        ctx = ReadContext(r, prefetch=False)
        piece = next(p for p in SnapshotReader(ctx, snap).pieces(2 * MiB, 2 * MiB + 1))
        ctx.close()
        path = os.path.join(str(repo_path), piece.loc.pack)
    with open(path, "r+b") as f:  # flip one payload byte: the chunk no longer hashes right
        f.seek(piece.loc.offset + 100)
        b = f.read(1)
        f.seek(piece.loc.offset + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    yield img, piece
    with open(path, "r+b") as f:  # repair, so the after-test consistency check sees a sound repository
        f.seek(piece.loc.offset + 100)
        f.write(b)
    # the failed reads recorded the chunk as damaged; a verified read of the mended copy clears it
    run_cli("check", "-r", repo_path, "--read-data")


def test_nbd_read_of_damaged_chunk_is_eio(damaged, repo_path):
    img, piece = damaged
    with nbd_server(repo_path) as (proc, port):
        url = f"nbd://127.0.0.1:{port}/latest"
        bad = subprocess.run([tool("qemu-io"), "-r", "-f", "raw", "-c", f"read {piece.offset} 4096", url],
                             capture_output=True, text=True)
        assert "Input/output error" in bad.stdout + bad.stderr
        good = subprocess.run([tool("qemu-io"), "-r", "-f", "raw", "-c", "read 0 4096", url],
                              capture_output=True, text=True)
        assert "read 4096/4096" in good.stdout, good.stdout + good.stderr
        assert proc.poll() is None


def test_fuse_read_of_damaged_chunk_fails(damaged, tmp_path, repo_path):
    img, piece = damaged
    mnt = tmp_path / "mnt"
    with fuse_mount(repo_path, mnt):
        fd = os.open(mnt / "latest" / "disk.img", os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 0) == img.read_bytes()[:4096]
            with pytest.raises(OSError) as exc:
                os.pread(fd, 4096, piece.offset)
            assert exc.value.errno == errno.EIO
        finally:
            os.close(fd)


def test_read_ahead_past_a_damaged_chunk_serves_the_sound_reads(damaged, repo_path):
    """The NBD server reads ahead of a sequential stream: a damaged chunk in the window read
    ahead fails only the reads that need it, and is never served."""
    from diskvault.errors import DamagedData
    from diskvault.ops.access.snapshot_reader import Stream

    img, piece = damaged
    data = img.read_bytes()
    with Repository.open(str(repo_path), passphrase=secret) as r:
        ctx = ReadContext(r, prefetch=False, readahead=1 * MiB)
        reader, stream = SnapshotReader(ctx, r.resolve("latest")), Stream()
        failed = []
        for off in range(0, len(data), 64 << 10):
            try:
                assert reader.read(off, 64 << 10, stream) == data[off : off + (64 << 10)]
            except DamagedData:
                failed.append(off)
        ctx.close()
    bad = range(piece.offset - (64 << 10) + 1, piece.offset + piece.length)
    assert failed and all(off in bad for off in failed)
