"""Where a restore writes: a new image file, an existing file or a block device overwritten
in place, stdout, or /dev/null. Knows nothing of the repository.

``Target(path, size, force, protect=..., partition=...)`` checks the path and opens it:

- ``-``: stdout, written strictly in order (zeros are written as zero bytes); refused when
  stdout is a terminal or a mounted block device.
- a new file: created under a temporary name in the target's folder,
  ``.NAME.diskvault-restore-XXXXXXXX``, with ``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0600,
  flock-ed while it is written, sparse (zeros stay holes); ``commit`` fsyncs it and renames
  it to NAME only if NAME still does not exist (``renameat2(RENAME_NOREPLACE)``), so the
  name appears only complete and never replaces what appeared meanwhile. Temporary files of
  an earlier restore to the same NAME that nobody holds any more (killed restores) are
  removed first.
- an existing regular file (non-empty ones, or ones another user owns, only with ``force``):
  overwritten in place like a device: same inode, mode, owner and hard links; opened
  without ``O_TRUNC`` and with ``O_NOFOLLOW``; zero ranges are punched as holes; a smaller
  file grows to the image size, a bigger one keeps its size (bytes past the image are left
  as they were). Refused while the file backs a mounted loop device.
- a block device (only with ``force``): never when it or a partition of it is mounted or
  held, never when smaller than ``min_size`` (default: the image); writes past its end are
  cut off (a whole disk restored onto a smaller one whose partitions fit, see
  images/table_adjust.py); ``sector_size`` is its logical sector size.
- ``/dev/null``: nothing is kept (a restore there only verifies).

A symbolic link as the target is refused unless ``force``; then the file or device it
resolves to is the target (``path`` is the resolved path, ``via`` the link). A target inside
the folder ``protect`` (the repository) is always refused. When ``partition`` (a partition
number) is given, the bytes are one partition: a target that holds a partition table is
refused unless ``force`` (it would be overwritten from byte 0), naming the partition's own
device. ``read``: an in-place target is opened for reading too (delta restore).
``discard``: zero ranges of a device are discarded (fallocate PUNCH_HOLE: the kernel
guarantees zeros) instead of written. Raises TargetError (exit 5) with the reason,
OutOfSpace when the file system is full.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import stat

from ..errors import OutOfSpace, TargetError
from ..writeback import start_writeback
from .device import (
    libc, logical_sector_size, loop_holder, mount_holder, partition_path, punch_hole, reread_partitions, zero_range,
)
from .partitions import PartitionError, read_table

TEMP_TAG = ".diskvault-restore-"
_ZERO = bytes(1 << 20)
AT_FDCWD = -100
RENAME_NOREPLACE = 1


def inside(path: str, root: str) -> bool:
    """Whether ``path`` (existing or not) is ``root`` or lies below it, judged by the folders'
    device and inode numbers, not by their names: a bind mount or a link to the repository is
    inside it too."""
    try:
        top = os.stat(root)
    except OSError:
        return False
    here = path if os.path.lexists(path) and os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    here = os.path.abspath(here or ".")
    while True:
        try:
            st = os.stat(here)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (top.st_dev, top.st_ino):
            return True
        up = os.path.dirname(here)
        if up == here:
            return False
        here = up


def side_file(path: str, force: bool, protect: str | None = None):
    """Check now, before a long restore, that a small file such as a ddrescue map can be
    written at ``path``: not inside ``protect`` (the repository), not a symbolic link, not a
    device or folder, and an existing file only with ``force``; returns ``write(data)``, which
    writes it under a temporary name and renames it into place. Raises TargetError."""
    if protect is not None and inside(path, protect):
        raise TargetError(f"{path} is inside the repository {protect}: write it somewhere else")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TargetError(f"cannot use {path}: {exc.strerror}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise TargetError(f"{path} is a symbolic link to {os.path.realpath(path)}: give the file itself")
        if not stat.S_ISREG(st.st_mode):
            raise TargetError(f"{path} is not a regular file: give a file name")
        if not force:
            raise TargetError(f"{path} exists: add --force to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK):
        raise TargetError(f"cannot write in {folder}: choose a folder you may write")

    def write(data: bytes) -> None:
        temp = os.path.join(folder, f".{os.path.basename(path)}{TEMP_TAG}{secrets.token_hex(4)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            (os.replace if force else _rename_noreplace)(temp, path)
        except FileExistsError:
            os.unlink(temp)
            raise TargetError(f"{path} appeared meanwhile (nothing was replaced): run again with another name") from None
        except OSError as exc:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise os_error(exc, path) from None

    return write


def temp_prefix(name: str) -> str:
    """The start of the temporary names of a restore to file NAME: ``.NAME.diskvault-restore-``
    (NAME cut to 200 bytes so that the whole stays within a file name's 255)."""
    return "." + os.fsdecode(os.fsencode(name)[:200]) + TEMP_TAG


def remove_stale_temps(folder: str, name: str) -> list[str]:
    """Remove this user's temporary files of restores to ``folder/name`` that no running
    restore holds (their flock can be taken), also those of older versions
    (``.NAME.diskvault-XXXXXXXX``); returns the names removed."""
    prefix, legacy = temp_prefix(name), f".{name}.diskvault-"  # legacy: before 0.2, ".NAME.diskvault-XXXXXXXX"

    def ours(entry: str) -> bool:
        rest = entry[len(legacy):]
        return entry.startswith(prefix) or (
            entry.startswith(legacy) and len(rest) == 8 and all(c in "0123456789abcdef" for c in rest))

    try:
        entries = [e for e in os.listdir(folder) if ours(e)]
    except OSError:
        return []
    removed = []
    for entry in entries:
        path = os.path.join(folder, entry)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a restore is writing it
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(path)
                removed.append(entry)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def os_error(exc: OSError, path: str) -> Exception:
    """The TargetError/OutOfSpace for an OSError while writing ``path``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutOfSpace(f"no space left to write {path}")
    if exc.errno == errno.EPIPE:
        return TargetError(f"{path} was closed before the image was complete (broken pipe)")
    return TargetError(f"cannot write {path}: {exc.strerror}")


def _rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (FileExistsError)."""
    fn = getattr(libc(), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), dst)
    if os.path.lexists(dst):  # no RENAME_NOREPLACE on this file system: check, then rename
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def _fsync_dir(folder: str) -> None:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Target:
    """An open restore target. ``kind``: "file", "device", "stdout" or "null"; ``in_place``:
    an existing file or a device is overwritten; ``size`` the image bytes to write;
    ``target_size`` the target's size in bytes once written; ``warnings`` human lines."""

    def __init__(self, path: str, size: int, force: bool, protect: str | None = None,
                 partition: int | None = None, min_size: int | None = None, read: bool = False,
                 discard: bool = False, dry_run: bool = False) -> None:
        self.path = path
        self.dry_run = dry_run  # opened for reading only: nothing is written, not even its size
        self.reread_table = partition is None  # a whole disk: the kernel reads its new table
        self.min_size = size if min_size is None else min_size
        self.read = read
        self.discard = discard
        self.limit: int | None = None  # a device's size: nothing is written past it
        self.sector_size: int | None = None  # a device's logical sector size
        self.via: str | None = None  # the symbolic link given, when force followed it
        self.size = size
        self.fd = -1
        self.temp: str | None = None  # a new file's temporary name until commit
        self.in_place = False
        self.old_size = 0
        self.target_size = size
        self.pos = 0  # stdout: bytes written so far
        self.warnings: list[str] = []
        if path == "-":
            self._open_stdout()
            return
        if path == "":
            raise TargetError("the target is an empty name: give an image file, a block device, or - for stdout")
        st = self._lstat(path)
        if st is not None and stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            if not force:
                raise TargetError(f"{path} is a symbolic link to {real}: add --force to write {real} through it")
            self.via, self.path = path, real
            st = self._lstat(real)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise TargetError(f"{path} is a loop of symbolic links: give the file or device itself")
        path = self.path
        if protect is not None and inside(path, protect):
            raise TargetError(f"{path} is inside the repository {protect}: restore somewhere else")
        if st is None:
            self._create(path)
        elif stat.S_ISBLK(st.st_mode):
            self._open_device(path, st, force, partition)
        elif stat.S_ISCHR(st.st_mode) and os.path.realpath(path) == os.devnull:
            self.kind = "null"  # verify only: nothing is kept
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            self.target_size = 0
        elif stat.S_ISDIR(st.st_mode):
            raise TargetError(f"{path} is a directory: give an image file name inside it")
        elif not stat.S_ISREG(st.st_mode):
            raise TargetError(f"{path} is neither a regular file nor a block device: give one, or - for stdout")
        else:
            self._open_file(path, st, force, partition)

    # --- opening -------------------------------------------------------------------------
    @staticmethod
    def _lstat(path: str) -> os.stat_result | None:
        try:
            return os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TargetError(f"cannot use {path} as the target: {exc.strerror}") from None

    def _open_stdout(self) -> None:
        self.kind, self.path, self.fd = "stdout", "stdout", 1
        if os.isatty(1):
            raise TargetError("stdout is a terminal: redirect it (diskvault restore SNAPSHOT - > disk.img, or | dd of=…)")
        st = os.fstat(1)
        holder = mount_holder(st.st_rdev) if stat.S_ISBLK(st.st_mode) else None
        if holder:
            raise TargetError(f"stdout is a block device in use ({holder}): unmount it first; "
                              "diskvault never writes a mounted device")

    def _mode(self) -> int:
        return os.O_RDONLY if self.dry_run else os.O_RDWR if self.read else os.O_WRONLY

    def _open(self, path: str, flags: int, st: os.stat_result) -> int:
        """Open the (l)stat-ed path, never through a symlink, and check it is still that file."""
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise TargetError(f"{path} is busy (mounted or held): unmount it first") from None
            hint = " (immutable or append-only? see lsattr)" if exc.errno == errno.EPERM else ""
            raise TargetError(f"cannot open {path} for writing: {exc.strerror}{hint}") from None
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise TargetError(f"{path} was replaced while restore opened it: run the restore again")
        return fd

    def _check_table(self, path: str, st: os.stat_result, force: bool, partition: int | None) -> None:
        """Refuse to write one partition's bytes over a partition table (unless force)."""
        if partition is None:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            label = read_table(lambda off, n: os.pread(fd, n, off), size).label if size else "none"
        except PartitionError:
            label = "damaged"
        except OSError:
            return
        finally:
            os.close(fd)
        if label == "none":
            return
        if stat.S_ISBLK(st.st_mode):
            right = f"restore onto the partition itself ({partition_path(st.st_rdev, partition)})"
        else:
            right = "restore into a new image file"
        what = f"{path} holds a {label} partition table, and partition {partition} would be written over it from byte 0"
        if not force:
            raise TargetError(f"{what}: {right}, or add --force to overwrite the table")
        self.warnings.append(f"warning: {what} (--force)")

    def _open_device(self, path: str, st: os.stat_result, force: bool, partition: int | None) -> None:
        self.kind, self.in_place = "device", True
        holder = mount_holder(st.st_rdev)
        if holder:
            raise TargetError(f"{path} is in use ({holder}): unmount it first; diskvault never writes a mounted device")
        self._check_table(path, st, force, partition)
        if not force:
            raise TargetError(f"{path} is a block device: its contents would be overwritten; add --force to do so")
        self.fd = self._open(path, self._mode() | os.O_EXCL, st)
        dev_size = os.lseek(self.fd, 0, os.SEEK_END)
        if dev_size < self.min_size:
            self.abort()
            raise TargetError(f"{path} holds {dev_size} bytes, the snapshot needs {self.min_size}: use a larger device")
        self.target_size = self.limit = dev_size
        try:
            self.sector_size = logical_sector_size(self.fd)
        except OSError:
            self.sector_size = None

    def _open_file(self, path: str, st: os.stat_result, force: bool, partition: int | None) -> None:
        self.kind, self.in_place, self.old_size = "file", True, st.st_size
        loop = loop_holder(st)
        if loop:
            raise TargetError(f"{path} backs {loop}: unmount it first; diskvault never writes a mounted image")
        self._check_table(path, st, force, partition)
        if st.st_size > 0 and not force:
            raise TargetError(f"{path} exists and is not empty: add --force to overwrite it in place")
        if st.st_uid != os.geteuid() and not force:  # e.g. planted in a shared folder: its owner could read the image
            raise TargetError(f"{path} belongs to uid {st.st_uid}, who could read the restored image: "
                              "add --force to write it anyway")
        folder, name = os.path.split(path)
        remove_stale_temps(folder or ".", name)
        self.fd = self._open(path, self._mode(), st)
        self.target_size = max(st.st_size, self.size)
        try:
            if st.st_size < self.size and not self.dry_run:
                os.ftruncate(self.fd, self.size)
        except OSError as exc:
            self.abort()
            raise os_error(exc, path) from None

    def _create(self, path: str) -> None:
        self.kind = "file"
        folder, name = os.path.split(path)
        if name in ("", ".", ".."):
            raise TargetError(f"{path} names a directory: give an image file name")
        folder = folder or "."
        if not os.path.isdir(folder):
            raise TargetError(f"directory {folder} does not exist")
        remove_stale_temps(folder, name)
        for _ in range(10):
            temp = os.path.join(folder, temp_prefix(name) + secrets.token_hex(4))
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                raise os_error(exc, path) from None
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until commit or abort: marks the file as in use
            st, now = os.fstat(fd), self._lstat(temp)
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                break
            os.close(fd)  # another restore's cleanup removed it before the flock: take a new name
        else:
            raise TargetError(f"cannot create a temporary file in {folder}: run the restore again")
        self.fd, self.temp = fd, temp
        try:
            os.ftruncate(fd, self.size)
        except OSError as exc:
            self.abort()
            raise os_error(exc, path) from None

    # --- writing -------------------------------------------------------------------------
    def write(self, offset: int, data) -> None:
        """Write ``data`` at ``offset`` of the image (thread-safe except for stdout, which
        takes writes in order only; a gap before ``offset`` is written as zeros)."""
        view = memoryview(data)
        if self.limit is not None and offset + len(view) > self.limit:  # a smaller device: its end
            view = view[: max(0, self.limit - offset)]
        if self.kind == "stdout":
            if offset < self.pos:
                raise ValueError(f"stdout written out of order: byte {offset} after {self.pos}")
            self._fill(offset)
            while view:
                view = view[os.write(self.fd, view):]
            self.pos = offset + len(data)
            return
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def _fill(self, end: int) -> None:
        while self.pos < end:
            self.pos += os.write(self.fd, memoryview(_ZERO)[: min(len(_ZERO), end - self.pos)])

    def zero(self, offset: int, length: int) -> None:
        """The image holds zeros there (a new file's holes and stdout's gaps need nothing)."""
        if self.kind == "device":
            length = min(length, self.limit - offset) if self.limit is not None else length
            if length <= 0:
                return
            if self.discard:
                punch_hole(self.fd, offset, length)
            else:
                zero_range(self.fd, offset, length)
        elif self.kind == "file" and self.in_place and offset < self.old_size:
            punch_hole(self.fd, offset, min(length, self.old_size - offset))

    def written(self, offset: int, length: int) -> None:
        """A range is written: start its writeback, so the final fsync has little left."""
        if self.kind in ("file", "device"):
            start_writeback(self.fd, offset, length)

    def commit(self) -> None:
        """Make the image durable; a new file gets its name only now (TargetError if the
        name appeared meanwhile); a whole device's partitions are read again by the kernel."""
        if self.dry_run:
            self._close()
            return
        if self.kind == "stdout":
            self._fill(self.size)
            return
        if self.kind != "null":
            os.fsync(self.fd)
        if self.kind == "device" and self.reread_table:
            reread_partitions(self.fd)
        if self.temp is not None:
            try:
                _rename_noreplace(self.temp, self.path)
            except FileExistsError:
                raise TargetError(f"{self.path} appeared while restoring (nothing was replaced): "
                                  "remove it or choose another name, and run the restore again") from None
            self.temp = None
            _fsync_dir(os.path.dirname(self.path) or ".")
        self._close()

    def _close(self) -> None:
        if self.fd >= 0 and self.kind != "stdout":
            os.close(self.fd)
        self.fd = -1

    def abort(self) -> None:
        """Close; a new file's temporary file is removed (the target name never appears)."""
        if self.temp is not None:
            try:
                os.unlink(self.temp)
            except FileNotFoundError:
                pass
            self.temp = None
        self._close()
