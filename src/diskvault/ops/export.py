"""Export a snapshot as a virtual disk (VHDX, VMDK, qcow2, VDI or raw) through ``qemu-img``.

The snapshot is served read-only over NBD on a private Unix socket (ops/access/nbd_server.py,
in a 0700 temporary folder) and ``qemu-img convert`` reads it from there and writes the
format it knows: no virtual-disk format is written by our own code. Zero extents reach
qemu-img as holes (NBD block status), so the output is as sparse as the format allows.
The output appears under its name only when complete (written under a temporary name in
the same folder, then renamed). Raises TargetError for an existing output without
``force`` or an unknown format, OutOfSpace, and SourceError when qemu-img fails.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from ..errors import DamagedData, OutOfSpace, SourceError, TargetError
from ..images.partitions import PartitionError
from ..repository import Repository
from ..repository.catalog import SnapshotRecord
from ..images.target import inside
from .access.nbd_server import NbdServer
from .partitions import snapshot_partitions

FORMATS = {  # file extension -> (qemu-img format, its creation options)
    ".vhdx": ("vhdx", ["-o", "subformat=dynamic"]),  # Windows attaches it natively; Hyper-V boots it
    ".vmdk": ("vmdk", ["-o", "subformat=monolithicSparse"]),  # VMware
    ".qcow2": ("qcow2", []),
    ".vdi": ("vdi", []),  # VirtualBox
    ".img": ("raw", []),
    ".raw": ("raw", []),
}


@dataclass
class ExportResult:
    snapshot: str
    output: str
    format: str
    size: int  # the virtual disk's size in bytes (the snapshot's)
    file_bytes: int  # bytes the output file occupies on disk
    duration: float

    def to_json(self) -> dict:
        return dict(self.__dict__)


def format_for(path: str, fmt: str | None) -> tuple[str, list[str]]:
    if fmt:
        for name, opts in FORMATS.values():
            if name == fmt:
                return name, opts
        raise TargetError(f"unknown format {fmt!r}: use one of {', '.join(sorted({f for f, _ in FORMATS.values()}))}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise TargetError(f"cannot tell the format of {path} from its extension: name it .vhdx, .vmdk, .qcow2, "
                          f".vdi or .img, or give --format")
    return FORMATS[ext]


def export(repo: Repository, snap: SnapshotRecord, output: str, fmt: str | None = None,
           force: bool = False) -> ExportResult:
    started = time.monotonic()
    name, opts = format_for(output, fmt)
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise SourceError("qemu-img is not installed: install it (Debian: apt-get install qemu-utils)")
    if name in ("vhdx", "vmdk", "vdi") and _sector_size(repo, snap) != 512:
        raise TargetError(f"snapshot {snap.id[:12]} holds a partition table for 4096-byte sectors and qemu-img writes "
                          f"{name} disks with 512-byte sectors, where that table would not be found: export it as "
                          ".qcow2 or .img instead")
    output = os.path.abspath(output)
    if inside(output, repo.path):
        raise TargetError(f"{output} is inside the repository {repo.path}: export somewhere else")
    if os.path.lexists(output):
        if not stat.S_ISREG(os.lstat(output).st_mode):  # a device node, FIFO, link: never replaced by a file
            raise TargetError(f"{output} exists and is not a regular file: give a file name")
        if not force:
            raise TargetError(f"{output} exists: add --force to replace it")
    folder = os.path.dirname(output)
    if not os.path.isdir(folder):
        raise TargetError(f"directory {folder} does not exist")
    tmp_out = os.path.join(folder, f".{os.path.basename(output)}.diskvault-export-{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="diskvault-export-") as tmp:
        sock = os.path.join(tmp, "nbd.sock")
        server = NbdServer(repo, f"unix:{sock}", 0, log=lambda msg: None)
        thread = threading.Thread(target=server.serve_forever, name="diskvault-export-nbd", daemon=True)
        thread.start()
        try:
            proc = subprocess.run(
                [qemu_img, "convert", "-f", "raw", "-O", name, *opts, f"nbd+unix:///{snap.id}?socket={sock}", tmp_out],
                capture_output=True, text=True)
        finally:
            server.stop()
            thread.join(10)
        if proc.returncode != 0:
            _remove(tmp_out)
            why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            if "No space left" in why:
                raise OutOfSpace(f"no space left to write {output}")
            raise SourceError(f"qemu-img convert failed: {why}")
    try:
        fd = os.open(tmp_out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp_out, 0o600)  # a system image holds every secret of its machine
        os.replace(tmp_out, output)
    except OSError as exc:
        _remove(tmp_out)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpace(f"no space left to write {output}") from None
        raise TargetError(f"cannot write {output}: {exc.strerror}") from None
    return ExportResult(snap.id, output, name, snap.size, os.stat(output).st_blocks * 512,
                        round(time.monotonic() - started, 3))


def _sector_size(repo: Repository, snap: SnapshotRecord) -> int:
    """The sector size the snapshot's partition table is written for (512 when it has none)."""
    try:
        return snapshot_partitions(repo, snap).sector_size
    except (PartitionError, DamagedData):
        return 512


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
