"""Open a snapshot source (image file, block device, or ``-`` for stdin) and read it.

``Source.extents()`` splits the source into data extents and holes (SEEK_DATA/SEEK_HOLE on
sparse files), so holes are never read. ``Source.filler(offset, length)`` returns a function
that reads the extent sequentially into caller-given buffers. Opening raises SourceError with
a one-line reason (missing, permission denied, a directory, unreadable).

``open_command(argv)`` streams a producer's standard output; ``Source.finish()`` raises
SourceError unless the producer exited 0. ``Source.mounts()`` tells where a device (or a
loop device over an image file, or a partition or device-mapper holder of either) is
mounted; ``Source.current_size()`` re-reads the size, to tell a source that changed size
while it was read.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import SourceError
from .device import held_elsewhere, loop_backings, mountinfo

HOLE_MERGE = 1 << 20  # holes shorter than this are read as zeros: fewer, longer extents


@dataclass
class Source:
    path: str
    kind: str  # "file", "device" or "stdin"
    fd: int
    size: int | None  # None for stdin
    proc: subprocess.Popen | None = None  # the producer, for a command's output
    format: str | None = None  # a virtual disk's format (vhdx, vmdk, qcow2, vdi), read through qemu
    virtual_size: int | None = None  # a virtual disk's size in bytes: what its stream must hold

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        """``(offset, length, is_data)`` covering the source in order; one data extent of
        unknown length (``-1``) for stdin."""
        if self.size is None:
            yield 0, -1, True
            return
        if self.kind == "file":
            yield from _sparse_extents(self.fd, self.size)
        elif self.size:
            yield 0, self.size, True

    def filler(self, offset: int, length: int) -> Callable[[memoryview], int]:
        fd, path, size = self.fd, self.path, self.size
        pos = offset
        end = None if length < 0 else offset + length

        def fill(view: memoryview) -> int:
            nonlocal pos
            want = len(view) if end is None else min(len(view), end - pos)
            got = 0
            while got < want:
                try:
                    if end is None:
                        n = os.readv(fd, [view[got:want]])
                    else:
                        n = os.preadv(fd, [view[got:want]], pos)
                except OSError as exc:
                    raise SourceError(f"cannot read {path} at byte {pos}: {exc.strerror}") from None
                if n == 0:
                    if end is None:
                        break
                    raise SourceError(f"{path} ended at byte {pos}, before its size {size} when opened: it shrank while "
                                      "being read; snapshot it while nothing writes to it")
                got += n
                pos += n
            return got

        return fill

    def current_size(self) -> int | None:
        """The source's size now (None for a stream): compared with ``size`` afterwards."""
        if self.size is None:
            return None
        st = os.fstat(self.fd)
        return os.lseek(self.fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size

    def mounts(self) -> list[dict]:
        """Where this source is mounted: ``[{"device", "mountpoint", "mode": "ro"|"rw"}]``
        for the device itself, its partitions and device-mapper holders (LVM, crypt), and,
        for an image file, the loop devices over it and theirs (and loops over those); [] for a
        stream. When no mount is found in this namespace but one of those devices cannot be
        opened exclusively (O_EXCL: EBUSY), it is mounted elsewhere (another mount namespace,
        a container) or used as swap: one entry, read-write, says so."""
        if self.size is None:
            return []
        st = os.fstat(self.fd)
        if stat.S_ISBLK(st.st_mode):
            roots = [f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"]
        else:
            roots = _loop_devices_over(st)
        devices: set[str] = set()
        for root in roots:
            _add_related(root, devices)
        _add_loops_over(devices)
        found = [{k: v for k, v in m.items() if k != "devs"} for m in mountinfo() if m["devs"] & devices]
        busy = None if found else _open_exclusively(devices)
        if busy:  # no mount here, yet the kernel holds it: a mount in another namespace (or swap)
            found = [{"device": busy, "mountpoint": "(not in this mount namespace: it is open exclusively, as a "
                      "mounted or swap device is)", "mode": "rw"}]
        return found

    def finish(self, read: int | None = None) -> None:
        """After the last byte (``read`` bytes in all): raises SourceError when the producing
        command failed, or a virtual disk's stream did not hold its size."""
        if self.proc is None:
            return
        self.proc.stdout.close()
        code = self.proc.wait()
        if code == 0 and self.virtual_size is not None and read is not None and read != self.virtual_size:
            raise SourceError(f"{self.path} gave {read} bytes, its virtual size is {self.virtual_size}: "
                              "the snapshot is not saved")
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise SourceError(f"{self.path} {how}: the snapshot is not saved; fix the command and take it again")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.stdout.close()
            self.proc.wait()
        elif self.path != "-":  # never close the process's own stdin
            os.close(self.fd)


def _add_related(dev: str, out: set[str]) -> None:
    """Add block device ``dev`` (``"M:m"``), its partitions and its holders, recursively."""
    if dev in out:
        return
    out.add(dev)
    base = os.path.realpath(f"/sys/dev/block/{dev}")
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:  # partitions: subfolders with a ``partition`` file
        if os.path.exists(os.path.join(base, name, "partition")):
            _add_related(_read_dev(os.path.join(base, name)), out)
    try:
        holders = os.listdir(os.path.join(base, "holders"))
    except OSError:
        holders = []
    for name in holders:
        _add_related(_read_dev(f"/sys/class/block/{name}"), out)


def _read_dev(folder: str) -> str:
    try:
        with open(os.path.join(folder, "dev")) as f:
            return f.read().strip()
    except OSError:
        return ""


def _add_loops_over(devices: set[str]) -> None:
    """Add the loop devices backed by one of ``devices`` (a loop over a loop device), and
    theirs, with their partitions and holders."""
    while True:
        more = {_read_dev(f"/sys/block/{name}") for name, bst in loop_backings() if stat.S_ISBLK(bst.st_mode)
                and f"{os.major(bst.st_rdev)}:{os.minor(bst.st_rdev)}" in devices} - devices
        if not more:
            return
        for dev in more:
            _add_related(dev, devices)


def _open_exclusively(devices: set[str]) -> str | None:
    """The first of ``devices`` the kernel holds with no holder to show for it
    (``device.held_elsewhere``), as a path; None when there is none."""
    for dev in sorted(devices):
        major, _, minor = dev.partition(":")
        if major.isdigit() and minor.isdigit() and held_elsewhere(os.makedev(int(major), int(minor))):
            return f"/dev/{os.path.basename(os.path.realpath(f'/sys/dev/block/{dev}'))}"
    return None


def _loop_devices_over(st: os.stat_result) -> list[str]:
    """The loop devices (``"M:m"``) whose backing file is the file ``st`` describes."""
    return [_read_dev(f"/sys/block/{name}") for name, bst in loop_backings()
            if (bst.st_dev, bst.st_ino) == (st.st_dev, st.st_ino)]


def data_ranges(fd: int, offset: int, length: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` byte ranges of the regular file ``fd`` within ``[offset,
    offset+length)`` that are not holes (lseek SEEK_DATA/SEEK_HOLE). A file system that
    cannot tell gives the whole range as data."""
    out: list[tuple[int, int]] = []
    pos, stop = offset, offset + length
    while pos < stop:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole (or the end of the file) from here
                break
            return [(offset, stop)]
        if start >= stop:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), stop)
        out.append((start, end))
        pos = end
    return out


def _sparse_extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    data: list[list[int]] = []
    for start, end in data_ranges(fd, 0, size):
        if data and start - data[-1][1] < HOLE_MERGE:
            data[-1][1] = end
        else:
            data.append([start, end])
    pos = 0
    for start, end in data:
        if start > pos:
            yield pos, start - pos, False
        yield start, end - start, True
        pos = end
    if pos < size:
        yield pos, size - pos, False


def open_command(argv: list[str]) -> Source:
    """Run ``argv`` and stream its standard output (its stderr stays ours); raises
    SourceError when it cannot be started."""
    name = "command " + " ".join(argv)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise SourceError(f"cannot run {argv[0]}: {exc.strerror}: give a command that writes the image to stdout") from None
    assert proc.stdout is not None
    return Source(name, "stdin", proc.stdout.fileno(), None, proc)


VIRTUAL_DISKS = {".vhdx": "vhdx", ".vmdk": "vmdk", ".qcow2": "qcow2", ".vdi": "vdi"}


def virtual_disk_format(path: str) -> str | None:
    """The virtual-disk format a source's name announces (``.vhdx``, ``.vmdk``, ``.qcow2``,
    ``.vdi``), or None for a raw image, a device or a stream."""
    return VIRTUAL_DISKS.get(os.path.splitext(path)[1].lower())


def open_virtual_disk(path: str, fmt: str) -> Source:
    """Stream the disk inside a virtual-disk file through qemu (``qemu-nbd`` serves it,
    ``nbdcopy`` copies it to a pipe): diskvault has no virtual-disk code of its own. Raises
    SourceError when the file is missing, not of format ``fmt``, or the tools are absent."""
    if not os.path.exists(path):
        raise SourceError(f"source {path} does not exist: give an image file, a block device or - for stdin")
    for tool, package in (("qemu-img", "qemu-utils"), ("qemu-nbd", "qemu-utils"), ("nbdcopy", "libnbd-bin")):
        if shutil.which(tool) is None:
            raise SourceError(f"reading a {fmt} file needs {tool}: install it (Debian: apt-get install {package})")
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, path], capture_output=True, text=True)
    if info.returncode != 0:
        why = (info.stderr.strip().splitlines() or ["no message"])[-1]
        raise SourceError(f"{path} cannot be read as a {fmt} virtual disk ({why}): check the file, or rename a raw "
                          "image to .img")
    check = subprocess.run(["qemu-img", "check", "-f", fmt, path], capture_output=True, text=True)
    if check.returncode in (1, 2):  # 0 clean, 3 leaked clusters only, 63 the format has no check
        why = (check.stdout.strip().splitlines() or check.stderr.strip().splitlines() or ["errors"])[-1]
        raise SourceError(f"{path} is a damaged {fmt} virtual disk (qemu-img check: {why}): "
                          "its missing parts would be read as zeros; repair or replace it first")
    size = int(json.loads(info.stdout)["virtual-size"])
    src = open_command(["nbdcopy", "--", "[", "qemu-nbd", "--read-only", "--format", fmt, path, "]", "-"])
    src.path, src.format, src.virtual_size = path, fmt, size
    return src


def open_source(path: str) -> Source:
    if path == "-":
        return Source("-", "stdin", sys.stdin.buffer.fileno(), None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SourceError(f"source {path} does not exist: give an image file, a block device or - for stdin") from None
    except PermissionError:
        raise SourceError(f"permission denied reading {path}: run as a user who can read it (root for devices)") from None
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise SourceError(f"{path} is a directory: give an image file, a block device or - for stdin")
    if stat.S_ISBLK(st.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
        kind = "device"
    elif stat.S_ISREG(st.st_mode):
        size, kind = st.st_size, "file"
    else:  # a pipe or character device given by name: stream it
        return Source(path, "stdin", fd, None)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except OSError:
        pass
    return Source(path, kind, fd, size)
