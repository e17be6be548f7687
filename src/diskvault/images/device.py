"""Block device helpers: is it mounted or held, how big is it, zero a range of it.

``mount_holder`` reads /proc/self/mountinfo and /sys/dev/block to tell whether a device or
any of its partitions is mounted (or held by device-mapper, md, …). ``zero_range`` uses the
BLKZEROOUT ioctl and falls back to writing zeros.
"""

from __future__ import annotations

import fcntl
import os
import struct

BLKZEROOUT = 0x127F
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


def mount_holder(rdev: int) -> str | None:
    """Where the device (or a partition of it) is mounted or who holds it, else None."""
    devs = _related(rdev)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[2] in devs:
                    return f"mounted on {parts[4]}"
    except OSError:
        pass
    name = _dev_name(rdev)
    if name:
        try:
            holders = os.listdir(f"/sys/class/block/{name}/holders")
        except OSError:
            holders = []
        if holders:
            return f"held by {', '.join(holders)}"
    return None


def zero_range(fd: int, offset: int, length: int) -> None:
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        return
    except OSError:
        pass
    end = offset + length
    while offset < end:
        n = os.pwrite(fd, memoryview(_ZERO)[: min(len(_ZERO), end - offset)], offset)
        offset += n
