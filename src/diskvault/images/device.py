"""Block device helpers: is it mounted or held, zero a range of it or of a file.

``mountinfo`` lists the mounts of /proc/self/mountinfo with their devices; ``mount_holder``
reads it and /sys/dev/block to tell whether a device or any of its partitions is mounted (or
held by device-mapper, md, …), ``held_elsewhere`` whether the kernel holds one this process
cannot see mounted (another mount namespace); ``loop_holder`` tells whether an image file
backs a loop device that is mounted or held. ``zero_range`` uses the
BLKZEROOUT ioctl on a device, ``punch_hole`` fallocate(PUNCH_HOLE) on a file; both fall
back to writing zeros (``punch_hole`` on a block device zeroes with discard, where it can).
``logical_sector_size`` asks a device its sector size. ``partition_path`` names partition N of a disk (``/dev/sdb2``,
``/dev/nvme0n1p2``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import stat
import struct

BLKZEROOUT = 0x127F
BLKSSZGET = 0x1268  # logical sector size of a block device (int)
_ZERO = bytes(1 << 20)


def _dev_name(rdev: int) -> str | None:
    try:
        return os.path.basename(os.readlink(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"))
    except OSError:
        return None


def _related(rdev: int) -> set[str]:
    """major:minor of the device and of its partitions."""
    out = {f"{os.major(rdev)}:{os.minor(rdev)}"}
    name = _dev_name(rdev)
    if name:
        base = f"/sys/class/block/{name}"
        try:
            for entry in os.listdir(base):
                dev = os.path.join(base, entry, "dev")
                if entry.startswith(name) and os.path.exists(dev):
                    with open(dev) as f:
                        out.add(f.read().strip())
        except OSError:
            pass
    return out


def _unescape(field: str) -> str:
    """Mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    out = bytearray()
    raw = os.fsencode(field)
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 4].isdigit() and len(raw[i + 1 : i + 4]) == 3:
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mountinfo() -> list[dict]:
    """Every mount of this process's namespace: ``{"devs", "device", "mountpoint", "mode"}``,
    ``devs`` the set of ``"M:m"`` device numbers it stands for: the mount's own and, when its
    source is a block device, that device's (a Btrfs mount shows an anonymous device number,
    ``0:NN``, never its disk's). ``mode`` is ``"ro"`` or ``"rw"``."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = os.fsdecode(line).split(" ")
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        source = _unescape(fields[sep + 2])
        devs = {fields[2]}
        if source.startswith("/dev/"):
            try:
                st = os.stat(source)
                if stat.S_ISBLK(st.st_mode):
                    devs.add(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
            except OSError:
                pass
        out.append({"devs": devs, "device": source, "mountpoint": _unescape(fields[4]),
                    "mode": "ro" if "ro" in fields[5].split(",") else "rw"})
    return out


def mount_holder(rdev: int) -> str | None:
    """Where the device (or a partition of it) is mounted or who holds it, else None."""
    devs = _related(rdev)
    for m in mountinfo():
        if m["devs"] & devs:
            return f"mounted on {m['mountpoint']}"
    name = _dev_name(rdev)
    if name:
        try:
            holders = os.listdir(f"/sys/class/block/{name}/holders")
        except OSError:
            holders = []
        if holders:
            return f"held by {', '.join(holders)}"
    return None


def held_elsewhere(rdev: int) -> bool:
    """Whether the block device ``rdev``, with no holder and no partitions, will not open
    exclusively (O_EXCL: EBUSY): mounted in another mount namespace, used as swap or claimed
    by another program. False when it opens, or cannot be tried. (A disk whose partition is
    claimed will not open exclusively either, so a disk with partitions is not tried: its
    partitions are; nor is a device held by device-mapper or md: their mounts are looked up.)"""
    name = _dev_name(rdev)
    if not name or len(_related(rdev)) > 1:
        return False
    try:
        if os.listdir(f"/sys/class/block/{name}/holders"):
            return False
        fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno == errno.EBUSY
    os.close(fd)
    return False


def loop_backings() -> list[tuple[str, os.stat_result]]:
    """Every attached loop device: ``(name, os.stat of its backing file or device)``."""
    out = []
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(backing, "rb") as f:
                out.append((backing.split("/")[3], os.stat(os.fsdecode(f.read().rstrip(b"\n")))))
        except OSError:
            continue
    return out


def loop_holder(st: os.stat_result) -> str | None:
    """For an image file (its ``os.stat``): "LOOPDEV, which is mounted on X" (or held by …)
    when a loop device backed by it is mounted or held, else None."""
    for loop, bst in loop_backings():
        if (bst.st_dev, bst.st_ino) != (st.st_dev, st.st_ino):
            continue
        try:
            rdev = os.stat(f"/dev/{loop}").st_rdev
        except OSError:
            continue
        busy = any(held_elsewhere(os.makedev(*map(int, dev.split(":")))) for dev in _related(rdev))
        holder = mount_holder(rdev) or ("open exclusively (mounted in another mount namespace?)" if busy else None)
        if holder:
            return f"/dev/{loop}, which is {holder}"
    return None


def partition_path(rdev: int, number: int) -> str:
    """The device path of partition ``number`` of the disk ``rdev`` (``/dev/sdb2``,
    ``/dev/nvme0n1p2``, ``/dev/loop0p2``), as the kernel names it."""
    name = _dev_name(rdev) or "DISK"
    return f"/dev/{name}{'p' if name[-1].isdigit() else ''}{number}"


BLKRRPART = 0x125F  # re-read the partition table


def reread_partitions(fd: int) -> bool:
    """Ask the kernel to read the partition table of the whole disk open as ``fd`` again (so
    ``/dev/sdb2`` has its restored, perhaps grown, size); False when it cannot (a partition in
    use, a loop device without partition scanning): then ``partprobe`` or ``partx -u`` does it."""
    try:
        fcntl.ioctl(fd, BLKRRPART)
        return True
    except OSError:
        return False


def logical_sector_size(fd: int) -> int:
    """The logical sector size of the block device open as ``fd`` (512 or 4096), in bytes."""
    return struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]


ALIGN = 4096  # block devices zero and discard whole sectors: 4096 suits 512- and 4096-byte ones


def _split(offset: int, length: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``(head, middle, tail)`` of a range: the middle aligned to ALIGN, head and tail not."""
    end = offset + length
    lo = min(end, -(-offset // ALIGN) * ALIGN)
    hi = max(lo, end // ALIGN * ALIGN)
    return (offset, lo - offset), (lo, hi - lo), (hi, end - hi)


def zero_range(fd: int, offset: int, length: int) -> None:
    """Zero ``length`` bytes of a block device from ``offset``: BLKZEROOUT for the aligned
    middle (the ioctl takes whole sectors), written zeros for the rest or where it fails."""
    (ho, hn), (mo, mn), (to, tn) = _split(offset, length)
    _write_zeros(fd, ho, hn)
    _write_zeros(fd, to, tn)
    if mn:
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", mo, mn))
            return
        except OSError:
            pass
        _write_zeros(fd, mo, mn)


FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make ``length`` bytes from ``offset`` read as zeros, keeping the size: a hole in a
    regular file, a discard on a block device (whose aligned middle the kernel zeroes with
    unmap allowed), written zeros where neither can be done."""
    fallocate = getattr(libc(), "fallocate64", None) or getattr(libc(), "fallocate", None)
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        (ho, hn), (offset, length), (to, tn) = _split(offset, length)
        _write_zeros(fd, ho, hn)
        _write_zeros(fd, to, tn)
    if fallocate is not None and length:
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        if fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
    _write_zeros(fd, offset, length)


def _write_zeros(fd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        n = os.pwrite(fd, memoryview(_ZERO)[: min(len(_ZERO), end - offset)], offset)
        offset += n
