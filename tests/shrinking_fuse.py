"""A FUSE file system holding one file, /disk.img, whose size says SIZE bytes but whose
reads end at DATA bytes: a source that shrank while being read, without any timing.

Run: ``python shrinking_fuse.py MOUNTPOINT SIZE DATA`` (foreground until unmounted).
"""

from __future__ import annotations

import errno
import os
import stat
import sys

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy as fuse  # noqa: E402


class Shrinking(fuse.Operations):
    use_ns = True

    def __init__(self, size: int, data: int) -> None:
        self.size, self.data = size, data

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == "/disk.img":
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": self.size}
        raise fuse.FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "disk.img"]

    def open(self, path, flags):
        return 0

    def read(self, path, size, offset, fh):
        end = min(offset + size, self.data)
        return bytes((i * 7 + i // 4093) % 251 for i in range(offset, end)) if end > offset else b""


if __name__ == "__main__":
    fuse.FUSE(Shrinking(int(sys.argv[2]), int(sys.argv[3])), sys.argv[1], foreground=True, ro=True, direct_io=True)
