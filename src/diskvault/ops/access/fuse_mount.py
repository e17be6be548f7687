"""A read-only FUSE file system of a repository's snapshots (binding: mfusepy, libfuse 3).

Layout::

    MOUNT/<snapshot id>/disk.img     the whole image
    MOUNT/<snapshot id>/p<N>.img     partition N (numbered as sfdisk does), served by offset
    MOUNT/latest -> <snapshot id>    symlink to the newest snapshot

Reads go through a SnapshotReader (chunk cache shared by all files, prefetch per open file);
nothing is copied or restored. The snapshot list is re-read at most every LIST_TTL seconds,
so snapshots taken while mounted appear. Writes of any kind fail with EROFS; a damaged chunk
fails the read with EIO (and one line on stderr).

Why mfusepy: it is a maintained ctypes binding (the successor of fusepy, releases in 2025-26)
needing only the libfuse3 shared library at run time, no compiler and no headers, and a
synchronous, threaded API that fits our thread-safe readers. pyfuse3 needs a C build against
libfuse3-dev and an async (trio) event loop, which our blocking readers would have to be
wrapped for.

``mount_repository`` runs in the foreground until the file system is unmounted
(``fusermount3 -u``/``umount``) or the process gets SIGINT/SIGTERM/SIGHUP (libfuse then
unmounts). Missing FUSE support, a mount point that is not a directory, or a non-root user
without a usable fusermount3 raise TargetError before anything is mounted.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import signal
import stat
import sys
import threading
import time
from datetime import datetime

from ...repository.catalog import SnapshotRecord
from ...errors import DiskvaultError, TargetError
from ...images.partitions import PartitionError, read_table
from ...repository import Repository
from .snapshot_reader import ReadContext, SnapshotReader, Stream

LIST_TTL = 2.0


def _load_fuse():
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    try:
        import mfusepy
    except (OSError, AttributeError, ImportError) as exc:
        raise TargetError(f"FUSE is not usable here ({exc}): install fuse3 (libfuse3-3), or use diskvault serve") from None
    return mfusepy


def check_mountpoint(path: str) -> None:
    """Refuse early, with a one-line reason, what libfuse would refuse obscurely."""
    try:
        st = os.stat(path)
    except PermissionError:
        raise TargetError(f"permission denied for mount point {path}: choose a directory you can reach") from None
    except OSError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise TargetError(f"mount point {path} is not a directory: create it first (mkdir -p {path})")
    if os.path.ismount(path):
        raise TargetError(f"{path} is already a mount point: unmount it first or choose another directory")
    if not os.path.exists("/dev/fuse"):
        raise TargetError("/dev/fuse does not exist: load the fuse kernel module (modprobe fuse) or use diskvault serve")
    if os.geteuid() != 0:
        helper = shutil.which("fusermount3")
        if helper is None or not os.stat(helper).st_mode & stat.S_ISUID:
            raise TargetError(
                "mounting as a non-root user needs the setuid helper fusermount3 (package fuse3): "
                "install it, or run diskvault mount as root"
            )
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise TargetError("permission denied for /dev/fuse: add yourself to the fuse group or run as root")
        if not os.access(path, os.W_OK):
            raise TargetError(f"permission denied: you may only mount on a directory you own ({path})")


def _ts(snap: SnapshotRecord) -> int:
    try:
        return int(datetime.fromisoformat(snap.time.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0


class _Handle:
    def __init__(self, reader: SnapshotReader, base: int, size: int) -> None:
        self.reader = reader
        self.base = base
        self.size = size
        self.stream = Stream()


def make_operations(repo: Repository, ctx: ReadContext):
    mfusepy = _load_fuse()

    class VaultFS(mfusepy.Operations):
        use_ns = True

        def __init__(self) -> None:
            self.ctx = ctx
            self._mu = threading.Lock()
            self.snaps: dict[str, SnapshotRecord] = {}
            self.latest: str | None = None
            self.listed = 0.0
            self.readers: dict[str, SnapshotReader] = {}
            self.parts: dict[str, dict[str, tuple[int, int]]] = {}
            self.handles: dict[int, _Handle] = {}
            self.fhs = itertools.count(1)
            self.uid, self.gid = os.getuid(), os.getgid()

        # --- the tree -------------------------------------------------------------------
        def _snapshots(self) -> dict[str, SnapshotRecord]:
            with self._mu:
                if time.monotonic() - self.listed < LIST_TTL:
                    return self.snaps
            snaps = self.ctx.snapshots()
            with self._mu:
                self.snaps = {s.id: s for s in snaps}
                self.latest = snaps[-1].id if snaps else None
                self.listed = time.monotonic()
                return self.snaps

        def _reader(self, snap: SnapshotRecord) -> SnapshotReader:
            with self._mu:
                r = self.readers.get(snap.id)
                if r is None:
                    r = self.readers[snap.id] = SnapshotReader(self.ctx, snap)
                return r

        def _files(self, snap: SnapshotRecord) -> dict[str, tuple[int, int]]:
            """File name -> (offset in the image, size)."""
            with self._mu:
                files = self.parts.get(snap.id)
            if files is not None:
                return files
            reader = self._reader(snap)
            files = {"disk.img": (0, snap.size)}
            try:
                table = read_table(reader.read, reader.size)
                for p in table.data_partitions():
                    size = max(0, min(p.length, reader.size - p.offset))
                    files[f"p{p.number}.img"] = (p.offset, size)
            except PartitionError as exc:
                print(f"diskvault mount: snapshot {snap.id[:12]}: {exc}; only disk.img is shown", file=sys.stderr)
            except DiskvaultError as exc:
                print(f"diskvault mount: snapshot {snap.id[:12]}: {exc}", file=sys.stderr)
                raise mfusepy.FuseOSError(errno.EIO) from None
            with self._mu:
                self.parts[snap.id] = files
            return files

        def _lookup(self, path: str):
            """``("root"|"latest"|"dir"|"file", snap, (offset, size))`` or ENOENT."""
            parts = [p for p in path.split("/") if p]
            if not parts:
                return "root", None, None
            snaps = self._snapshots()
            if parts[0] == "latest" and len(parts) == 1 and self.latest:
                return "latest", snaps.get(self.latest), None
            if parts[0] == "latest" and self.latest:
                parts[0] = self.latest
            snap = snaps.get(parts[0])
            if snap is None or len(parts) > 2:
                raise mfusepy.FuseOSError(errno.ENOENT)
            if len(parts) == 1:
                return "dir", snap, None
            span = self._files(snap).get(parts[1])
            if span is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            return "file", snap, span

        # --- operations -------------------------------------------------------------------
        def getattr(self, path: str, fh=None) -> dict:
            kind, snap, span = self._lookup(path)
            t = _ts(snap) if snap else int(time.time() * 1e9)
            base = dict(st_uid=self.uid, st_gid=self.gid, st_atime=t, st_mtime=t, st_ctime=t)
            if kind in ("root", "dir"):
                return dict(base, st_mode=stat.S_IFDIR | 0o555, st_nlink=2)
            if kind == "latest":
                return dict(base, st_mode=stat.S_IFLNK | 0o777, st_nlink=1, st_size=len(self.latest or ""))
            return dict(base, st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=span[1],
                        st_blocks=(span[1] + 511) // 512, st_blksize=65536)

        def readlink(self, path: str) -> str:
            kind, snap, _ = self._lookup(path)
            if kind != "latest" or snap is None:
                raise mfusepy.FuseOSError(errno.EINVAL)
            return snap.id

        def readdir(self, path: str, fh: int):
            kind, snap, _ = self._lookup(path)
            if kind == "root":
                names = list(self._snapshots())
                return [".", "..", *(["latest"] if self.latest else []), *names]
            if kind == "dir":
                return [".", "..", *self._files(snap)]
            raise mfusepy.FuseOSError(errno.ENOTDIR)

        def open(self, path: str, flags: int) -> int:
            if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
                raise mfusepy.FuseOSError(errno.EROFS)
            kind, snap, span = self._lookup(path)
            if kind != "file":
                raise mfusepy.FuseOSError(errno.EISDIR)
            handle = _Handle(self._reader(snap), span[0], span[1])
            with self._mu:
                fh = next(self.fhs)
                self.handles[fh] = handle
            return fh

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            h = self.handles.get(fh)
            if h is None:
                raise mfusepy.FuseOSError(errno.EBADF)
            n = min(size, h.size - offset)
            if n <= 0:
                return b""
            try:
                return h.reader.read(h.base + offset, n, h.stream)
            except (DiskvaultError, OSError) as exc:
                print(f"diskvault mount: read of {path} at byte {offset} failed: {exc}", file=sys.stderr)
                raise mfusepy.FuseOSError(errno.EIO) from None

        def release(self, path: str, fh: int) -> int:
            with self._mu:
                self.handles.pop(fh, None)
            return 0

        def statfs(self, path: str) -> dict:
            return dict(f_bsize=4096, f_frsize=4096, f_blocks=0, f_bfree=0, f_bavail=0, f_namemax=255)

        def access(self, path: str, amode: int) -> int:
            self._lookup(path)
            if amode & os.W_OK:
                raise mfusepy.FuseOSError(errno.EROFS)
            return 0

        def _refuse(self, *args, **kwargs):
            raise mfusepy.FuseOSError(errno.EROFS)

        create = mkdir = rmdir = unlink = rename = symlink = link = chmod = chown = truncate = _refuse
        write = setxattr = removexattr = mknod = utimens = _refuse

    return mfusepy, VaultFS()


def mount_repository(repo: Repository, mountpoint: str, allow_other: bool = False,
                     on_ready=None) -> None:
    """Mount and serve until unmounted or interrupted (blocks)."""
    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    ctx = ReadContext(repo)
    mfusepy, ops = make_operations(repo, ctx)
    # libfuse installs its own SIGINT/SIGTERM/SIGHUP handlers (which unmount) only where the
    # handler is the default one; Python's handlers could never run while libfuse loops.
    old = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}
    if on_ready is not None:
        on_ready(mountpoint)
    try:
        options = dict(foreground=True, ro=True, fsname="diskvault", subtype="diskvault", kernel_cache=True,
                       max_threads=16, max_idle_threads=8)
        if allow_other:
            options["allow_other"] = True
        with repo.lock("shared", "mount"):  # prune cannot remove packs while they are mounted
            mfusepy.FUSE(ops, mountpoint, **options)
    except RuntimeError as exc:
        # fuse_main: 1-7 = could not set up or mount; 8 = the loop ended by a signal (a normal stop)
        if str(exc) != "8":
            raise TargetError(f"cannot mount on {mountpoint} (libfuse setup step {exc} failed; see the line above)") from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        ctx.close()
