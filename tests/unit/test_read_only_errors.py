"""errors.os_error and catalog.catalog_error: every operating-system and SQLite error is
reported as what it is, with its documented exit code and one line naming the file."""

from __future__ import annotations

import errno
import os
import sqlite3

import pytest

from diskvault import errors
from diskvault.repository.catalog import catalog_error

REPO = "/backup/repo"


@pytest.mark.parametrize("code,in_repo,outside", [
    (errno.ENOSPC, errors.EXIT_NO_SPACE, errors.EXIT_NO_SPACE),
    (errno.EDQUOT, errors.EXIT_NO_SPACE, errors.EXIT_NO_SPACE),
    (errno.EROFS, errors.EXIT_REPOSITORY, errors.EXIT_SOURCE_TARGET),
    (errno.EACCES, errors.EXIT_REPOSITORY, errors.EXIT_SOURCE_TARGET),
    (errno.EPERM, errors.EXIT_REPOSITORY, errors.EXIT_SOURCE_TARGET),
    (errno.EIO, errors.EXIT_REPOSITORY, errors.EXIT_SOURCE_TARGET),
    (errno.EMFILE, errors.EXIT_REPOSITORY, errors.EXIT_SOURCE_TARGET),
    (errno.ENFILE, errors.EXIT_REPOSITORY, errors.EXIT_SOURCE_TARGET),
    (errno.ENOENT, errors.EXIT_REPOSITORY, errors.EXIT_SOURCE_TARGET),
])
def test_os_error_exit_codes(code, in_repo, outside):
    exc = OSError(code, os.strerror(code), f"{REPO}/packs/ab/x.pack")
    mine = errors.os_error(exc, REPO)
    theirs = errors.os_error(OSError(code, os.strerror(code), "/dev/sdb"))
    assert (mine.exit_code, theirs.exit_code) == (in_repo, outside)
    for err, name in ((mine, "x.pack"), (theirs, "/dev/sdb")):
        text = str(err)
        assert "\n" not in text and ": " in text, text  # one line: what is wrong: what to do
        if code not in (errno.ENOSPC, errno.EDQUOT) or err is theirs:
            assert name in text, text
    if code == errno.EROFS:
        assert isinstance(mine, errors.RepositoryReadOnly) and "read-only" in str(mine)


def test_os_error_without_a_file_name():
    err = errors.os_error(OSError(errno.EIO, "Input/output error"))
    assert err.exit_code == errors.EXIT_SOURCE_TARGET and "input/output error" in str(err)


def raised(fn) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as info:
        fn()
    return info.value


def test_damaged_catalog_says_run_repair(tmp_path):
    db = tmp_path / "catalog.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(500),) for _ in range(100)])
    conn.commit()
    conn.close()
    data = bytearray(db.read_bytes())
    data[4096:4096 + 16] = bytes(b ^ 0xA5 for b in data[4096:4096 + 16])  # the table's first page header
    db.write_bytes(data)
    exc = raised(lambda: sqlite3.connect(db).execute("SELECT count(*) FROM t WHERE length(x) > 0").fetchone())
    err = catalog_error(exc, REPO)
    assert isinstance(err, errors.RepositoryError) and err.exit_code == errors.EXIT_REPOSITORY
    assert str(err).startswith(f"the catalog of {REPO} is damaged (") and f"diskvault repair -r {REPO}" in str(err)

    db.write_bytes(b"this is not SQLite at all" * 200)
    exc = raised(lambda: sqlite3.connect(db).execute("SELECT * FROM sqlite_master").fetchall())
    assert "is damaged (file is not a database)" in str(catalog_error(exc, REPO))


def test_full_and_read_only_catalog(tmp_path):
    db = tmp_path / "catalog.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count = 3")  # a database that cannot grow: SQLITE_FULL, as on a full disk
    exc = raised(lambda: conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(1000),) for _ in range(50)]))
    conn.close()
    err = catalog_error(exc, str(tmp_path))
    assert isinstance(err, errors.OutOfSpace) and err.exit_code == errors.EXIT_NO_SPACE

    ro = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    exc = raised(lambda: ro.execute("INSERT INTO t VALUES (1)"))
    ro.close()
    err = catalog_error(exc, REPO)
    assert isinstance(err, errors.RepositoryReadOnly) and err.exit_code == errors.EXIT_REPOSITORY


def test_unknown_sqlite_error_stays_a_bug():
    conn = sqlite3.connect(":memory:")
    exc = raised(lambda: conn.execute("SELECT * FROM no_such_table"))
    assert catalog_error(exc, REPO) is None  # a programming error: main() reports it as internal
