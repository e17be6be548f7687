"""Local directory backend.

Every write is atomic and durable: data goes to ``NAME.tmp-<random>``, is fsynced, given its
name, and the directory is fsynced, so after a crash a name holds either nothing or its
complete content. ``put`` and ``commit`` create only (the contract in storage/__init__.py):
the temporary file is hard-linked to ``NAME`` (EEXIST when it exists: atomic), or, on a file
system without hard links (exFAT, some FUSE and network file systems), renamed after a check;
``replace`` renames over ``NAME``. Left-over ``.tmp-`` files are garbage that ``clean_temporary``
removes. Raises OutOfSpace on ENOSPC (the temporary file is removed first), and
FileNotFoundError for a missing name.

Privacy and containment (docs/security.md): every file is created 0600 and every folder 0700
whatever the umask; when root writes into a folder owned by another user, the new file or
folder is given to that user (as SQLite does for its -wal/-shm), so the owner keeps using
the repository. Names are resolved below the root one folder at a time without following
symbolic links (a linked folder raises RepositoryError), and a storage given ``names`` lists,
deletes and cleans only files whose names match them: it never touches a file it did not name.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator

from ..errors import OutOfSpace, RepositoryError
from . import check_name

TMP_MARK = ".tmp-"
FILE_MODE = 0o600
DIR_MODE = 0o700
# what follows a stored name in its temporary files (SQLite adds -wal, -shm, -journal to a temporary catalog)
TMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{8}(?:-wal|-shm|-journal)?")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _make_private(fd: int, mode: int, parent_fd: int | None) -> None:
    """Give the new file or folder ``fd`` exactly ``mode`` (the umask may have taken bits away)
    and, when root creates it in another user's folder ``parent_fd``, that user as owner (as
    SQLite does for its -wal and -shm; a refusal, e.g. root squashed on NFS, is ignored as
    SQLite ignores it). ``parent_fd`` None: keep the creator as owner."""
    os.fchmod(fd, mode)
    if parent_fd is not None and os.geteuid() == 0:
        st = os.fstat(parent_fd)
        if st.st_uid != 0:
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
            except PermissionError:
                pass


def _new_file(dir_fd: int, name: str) -> int:
    """Create file ``name`` in ``dir_fd``, never an existing one nor through a symbolic link,
    0600 (see ``_make_private``); returns a descriptor open for writing."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                 dir_fd=dir_fd)
    try:
        _make_private(fd, FILE_MODE, dir_fd)
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    return fd


def private_file(path: str) -> int:
    """Create the new file ``path`` as ``_new_file`` does; returns a descriptor open for writing."""
    parent = os.open(os.path.dirname(os.path.abspath(path)), _DIR)
    try:
        return _new_file(parent, os.path.basename(path))
    finally:
        os.close(parent)


def private_dir(path: str, adopt: bool = True) -> None:
    """Make sure ``path`` is a real folder (RepositoryError for a link or a file): create it
    0700 unless it exists, owned as ``private_file`` (``adopt``) or by its creator."""
    parent = os.open(os.path.dirname(os.path.abspath(path)), _DIR)
    try:
        fd = _mkdir_at(parent, os.path.basename(path), adopt)
        os.close(fd)
    except NotADirectoryError:
        raise _not_a_folder(path) from None
    finally:
        os.close(parent)


class LocalFileWriter:
    """Writes are gathered and handed to the kernel with one ``writev`` per FLUSH_BYTES or
    FLUSH_COUNT pieces (a pack gets one piece per chunk: a system call each would cost a
    round trip through the GIL each)."""

    FLUSH_BYTES = 4 << 20
    FLUSH_COUNT = 512  # below IOV_MAX (1024)

    def __init__(self, storage: LocalStorage, name: str, replace: bool = False) -> None:
        self.replace = replace
        self.path = storage._path(check_name(name))
        self.dir = os.path.dirname(self.path)
        self.base = os.path.basename(name)
        self.tmp = f"{self.base}{TMP_MARK}{secrets.token_hex(4)}"
        self.dir_fd = storage._open_dir(os.path.dirname(name), create=True)
        self.fd = -1
        try:
            self.fd = _new_file(self.dir_fd, self.tmp)
        except BaseException:
            self.abort()
            raise
        self.pos = 0
        self._pending: list[memoryview] = []
        self._held = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``. It is kept, not copied, until the next ``flush`` or ``commit``:
        the caller must not change it before then."""
        self._pending.append(memoryview(data))
        self._held += len(data)
        self.pos += len(data)
        if self._held >= self.FLUSH_BYTES or len(self._pending) >= self.FLUSH_COUNT:
            self.flush()

    def flush(self) -> None:
        """Hand every pending write to the kernel."""
        pending, self._pending, self._held = self._pending, [], 0
        i = 0
        try:
            while i < len(pending):
                n = os.writev(self.fd, pending[i : i + self.FLUSH_COUNT])
                while i < len(pending) and n >= len(pending[i]):
                    n -= len(pending[i])
                    i += 1
                if n:  # a short write ended inside this piece
                    pending[i] = pending[i][n:]
        except OSError as exc:
            raise self._failed(exc) from None

    def tell(self) -> int:
        return self.pos

    def commit(self) -> None:
        self.flush()
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            if self.replace:
                os.rename(self.tmp, self.base, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            else:
                self._create_only()
            os.fsync(self.dir_fd)
        except OSError as exc:
            raise self._failed(exc) from None
        os.close(self.dir_fd)
        self.dir_fd = -1

    def _create_only(self) -> None:
        """Give the temporary file its name unless the name exists (FileExistsError)."""
        try:
            os.link(self.tmp, self.base, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "file exists (names are immutable)", self.path) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            # no hard links here: check, then rename (writers of one name are serialised above us)
            try:
                os.stat(self.base, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(self.tmp, self.base, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
                return
            raise FileExistsError(errno.EEXIST, "file exists (names are immutable)", self.path) from None
        os.unlink(self.tmp, dir_fd=self.dir_fd)

    def _failed(self, exc: OSError) -> Exception:
        """Remove the temporary file; the error to raise (OutOfSpace on a full disk)."""
        self.abort()
        if isinstance(exc, FileExistsError):
            return exc
        if _no_space(exc):
            return OutOfSpace(f"no space left on the repository's disk ({self.dir}): free some space, then run "
                              "the command again")
        return exc

    def abort(self) -> None:
        self._pending, self._held = [], 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dir_fd >= 0:
            try:
                os.unlink(self.tmp, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            os.close(self.dir_fd)
            self.dir_fd = -1


class LocalStorage:
    """Files under one directory; reads are positional (pread) and thread-safe.

    ``names``: the names this storage holds (a pattern matched against the whole name, e.g.
    ``packs/ab/ab12….pack``); ``list`` yields, ``delete`` accepts and ``clean_temporary``
    removes the temporary files of those names only. None: any name."""

    MAX_OPEN = 64

    def __init__(self, root: str, names: re.Pattern[str] | None = None) -> None:
        self.root = root
        self.names = names
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _open_dir(self, folder: str, create: bool = False) -> int:
        """A descriptor of ``folder`` (a name below the root, "" for the root), reached one
        component at a time without following a symbolic link; ``create`` makes missing
        folders (0700). Raises RepositoryError for a component that is a link or no folder,
        FileNotFoundError for a missing one."""
        fd = os.open(self.root, _DIR)
        try:
            done = self.root
            for part in folder.split("/") if folder else []:
                done = os.path.join(done, part)
                try:
                    sub = _mkdir_at(fd, part) if create else os.open(part, _DIR | os.O_NOFOLLOW, dir_fd=fd)
                except NotADirectoryError:
                    raise _not_a_folder(done) from None
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open(self, name: str) -> int:
        """A read-only descriptor of file ``name`` (no symbolic link followed)."""
        folder, base = os.path.split(check_name(name))
        dfd = self._open_dir(folder)
        try:
            return os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RepositoryError(f"{self._path(name)} is a symbolic link: the repository does not follow "
                                      "links; replace it by the file it points to") from None
            raise
        finally:
            os.close(dfd)

    def check_folder(self, folder: str) -> None:
        """Raise RepositoryError unless ``folder`` is missing or a real folder owned by the
        owner of the root (a link or another user's folder could lead writes, reads and
        deletes elsewhere)."""
        try:
            fd = self._open_dir(folder)
        except FileNotFoundError:
            return
        try:
            uid, owner = os.fstat(fd).st_uid, os.stat(self.root).st_uid
        finally:
            os.close(fd)
        if uid != owner:
            raise RepositoryError(
                f"{self._path(folder)} is owned by uid {uid}, the repository by uid {owner}: a repository's "
                f"folders must belong to its owner; check who changed it, then chown it to uid {owner}"
            )

    def check_file(self, name: str) -> None:
        """Raise RepositoryError unless the file ``name`` directly under the root is missing or
        a regular file (not a link) owned by the owner of the root: SQLite and ``open`` follow
        links, so a linked catalog would let its owner lead root's writes into another file."""
        try:
            st = os.lstat(self._path(name))
            owner = os.stat(self.root).st_uid
        except OSError:  # missing, or not ours to look at: opening it reports what is wrong
            return
        if not stat.S_ISREG(st.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise RepositoryError(f"{self._path(name)} is {what}: a repository's files must be its own; "
                                  "check who changed it, then put the real file back (diskvault repair rebuilds "
                                  "the catalog)")
        if st.st_uid != owner:
            raise RepositoryError(
                f"{self._path(name)} is owned by uid {st.st_uid}, the repository by uid {owner}: a repository's "
                f"files must belong to its owner; check who changed it, then chown it to uid {owner}"
            )

    def create(self, name: str) -> LocalFileWriter:
        return LocalFileWriter(self, name)

    def put(self, name: str, data: bytes) -> None:
        """Create ``name`` holding ``data``; the same bytes already there: nothing to do; other
        bytes: FileExistsError (names are immutable)."""
        w = self.create(name)
        w.write(data)
        try:
            w.commit()
        except FileExistsError:
            if self.size(name) != len(data) or self.read(name) != bytes(data):
                raise

    def replace(self, name: str, data: bytes) -> None:
        """Write ``name`` whether it exists or not, atomically (config, a record repair rewrites)."""
        w = LocalFileWriter(self, name, replace=True)
        w.write(data)
        w.commit()

    write_atomic = replace

    def read(self, name: str) -> bytes:
        with os.fdopen(self._open(name), "rb") as f:
            return f.read()

    def _fd(self, name: str) -> int:
        """A private duplicate of the cached descriptor of ``name``: the caller closes it, so
        evicting the cache entry meanwhile (another thread) never closes a file in use."""
        with self._lock:
            fd = self._fds.get(name)
            if fd is not None:
                self._fds.move_to_end(name)
            else:
                fd = self._open(name)
                self._fds[name] = fd
                while len(self._fds) > self.MAX_OPEN:
                    _, old = self._fds.popitem(last=False)
                    os.close(old)
            return os.dup(fd)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        fd = self._fd(name)
        try:
            data = os.pread(fd, length, offset)
            if len(data) < length:  # short read: the file is shorter than expected
                data += os.pread(fd, length - len(data), offset + len(data))
        except OSError as exc:  # e.g. EIO: name the file
            raise OSError(exc.errno, exc.strerror, self._path(name)) from None
        finally:
            os.close(fd)
        return data

    def size(self, name: str) -> int:
        folder, base = os.path.split(check_name(name))
        dfd = self._open_dir(folder)
        try:
            return os.stat(base, dir_fd=dfd, follow_symlinks=False).st_size
        finally:
            os.close(dfd)

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except FileNotFoundError:
            return False
        return True

    def _entries(self, folder: str) -> Iterator[tuple[str, int]]:
        """``(name, st_mode)`` of everything under ``folder`` (sorted per folder), entering no
        symbolic link and no folder it may not read."""
        try:
            fd = self._open_dir(folder)
        except (FileNotFoundError, PermissionError):
            return
        entries = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        entries.append((e.name, e.stat(follow_symlinks=False).st_mode))
                    except FileNotFoundError:  # removed or renamed meanwhile
                        pass
        except PermissionError:
            pass
        finally:
            os.close(fd)
        entries.sort()
        for base, mode in entries:
            name = f"{folder}/{base}" if folder else base
            yield name, mode
            if stat.S_ISDIR(mode):
                yield from self._entries(name)

    def _walk(self, folder: str) -> Iterator[str]:
        """Names of the regular files under ``folder`` (see ``_entries``)."""
        return (name for name, mode in self._entries(folder) if stat.S_ISREG(mode))

    def _ours(self, name: str) -> bool:
        return self.names.fullmatch(name) is not None if self.names is not None else TMP_MARK not in name

    def list(self, folder: str) -> Iterator[str]:
        """Names below ``folder`` ("" for all), sorted."""
        if folder:
            check_name(folder)
        for name in self._walk(folder):
            if self._ours(name):
                yield name

    def delete(self, name: str) -> None:
        """Remove file ``name`` (nothing when missing). Raises ValueError for a name this
        storage does not hold (a bug: it never deletes a file it did not name)."""
        if not self._ours(name):
            raise ValueError(f"{name!r} is not a name this storage holds")
        self._unlink(name)

    def _unlink(self, name: str) -> None:
        with self._lock:
            fd = self._fds.pop(name, None)
            if fd is not None:
                os.close(fd)
        folder, base = os.path.split(name)
        try:
            dfd = self._open_dir(folder)
        except FileNotFoundError:
            return
        try:
            os.unlink(base, dir_fd=dfd)
            os.fsync(dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    def clean_temporary(self) -> int:
        """Remove ``.tmp-`` files left by an interrupted write of a name this storage holds;
        returns how many."""
        n = 0
        for name in list(self._walk("")):
            m = TMP_SUFFIX.search(name)
            if m and m.end() == len(name) and (self.names is None or self.names.fullmatch(name[: m.start()])):
                self._unlink(name)
                n += 1
        return n

    def mode_problems(self) -> list[tuple[str, int]]:
        """``(name, mode)`` of the root (name "") and every file or folder below it that
        others than its owner may use: modes wider than 0600 (files) or 0700 (folders)."""
        found = [("", os.stat(self.root).st_mode), *self._entries("")]
        return [(name, stat.S_IMODE(mode)) for name, mode in found
                if (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and mode & 0o077]

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _mkdir_at(dir_fd: int, name: str, adopt: bool = True) -> int:
    """Create folder ``name`` in ``dir_fd`` 0700 (see ``_make_private``), or open the one that
    exists (e.g. just made by a concurrent writer); returns its descriptor. Raises
    NotADirectoryError when ``name`` is a symbolic link or no folder."""
    try:
        os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    except FileExistsError:
        created = False
    else:
        created = True
    fd = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=dir_fd)
    if created:
        try:
            _make_private(fd, DIR_MODE, dir_fd if adopt else None)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _not_a_folder(path: str) -> RepositoryError:
    what = "a symbolic link" if os.path.islink(path) else "not a folder"
    return RepositoryError(f"{path} is {what}: a repository's folders must be real folders (it never follows "
                           "links out of itself); move it away and put the folder it should be in its place")
