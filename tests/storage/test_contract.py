"""The storage contract (storage/__init__.py, docs/design.md "Storage contract"), one suite
run over every backend: a local directory, SeaweedFS and Ceph RGW (real servers, started by
tests/storage/conftest.py). In the manner of restic's backend tests."""

from __future__ import annotations

import os
import threading

import pytest

from diskvault.storage import NAME_CHARS, check_name

PACK = "packs/ab/ab" + ("0123456789abcdef" * 2)[:30] + ".pack"


def names_of(storage, folder=""):
    return sorted(storage.list(folder))


def test_put_get_size_exists_delete(storage):
    data = os.urandom(100_000)
    assert not storage.exists("snapshots/a.json")
    storage.put("snapshots/a.json", data)
    assert storage.exists("snapshots/a.json")
    assert storage.read("snapshots/a.json") == data
    assert storage.size("snapshots/a.json") == len(data)
    storage.delete("snapshots/a.json")
    assert not storage.exists("snapshots/a.json")
    with pytest.raises(FileNotFoundError):
        storage.read("snapshots/a.json")
    storage.delete("snapshots/a.json")  # deleting what is gone is no error


def test_empty_object(storage):
    storage.put("locks/empty.json", b"")
    assert storage.read("locks/empty.json") == b""
    assert storage.size("locks/empty.json") == 0
    assert storage.read_range("locks/empty.json", 0, 10) == b""


def test_ranges(storage):
    data = os.urandom(3 << 20)
    storage.put(PACK, data)
    for off, n in [(0, 1), (0, 64 << 10), (1000, 1000), (12345, 1 << 20), (len(data) - 1, 1), (0, len(data))]:
        assert storage.read_range(PACK, off, n) == data[off:off + n]
    assert storage.read_range(PACK, len(data) - 10, 100) == data[-10:]  # short at the end
    assert storage.read_range(PACK, len(data), 10) == b""
    assert storage.read_range(PACK, 5, 0) == b""


def test_missing_names_raise_file_not_found(storage):
    for call in (lambda: storage.read("packs/00/none.pack"), lambda: storage.size("packs/00/none.pack"),
                 lambda: storage.read_range("packs/00/none.pack", 0, 10)):
        with pytest.raises(FileNotFoundError):
            call()
    assert not storage.exists("packs/00/none.pack")


def test_list_by_folder(storage):
    names = ["packs/ab/1.pack", "packs/ab/2.pack", "packs/cd/3.pack", "snapshots/x.json", "config.json"]
    for n in names:
        storage.put(n, n.encode())
    assert names_of(storage) == sorted(names)
    assert names_of(storage, "packs") == sorted(names[:3])
    assert names_of(storage, "packs/ab") == names[:2]
    assert names_of(storage, "snapshots") == ["snapshots/x.json"]
    assert names_of(storage, "pack") == []  # a folder, not a string prefix
    assert names_of(storage, "locks") == []
    storage.delete("packs/ab/1.pack")
    assert names_of(storage, "packs") == ["packs/ab/2.pack", "packs/cd/3.pack"]  # list after delete


def test_many_names_list_past_one_page(storage):
    names = [f"snapshots/{i:05d}.json" for i in range(1100)]  # S3 pages hold 1000 keys
    threads = [threading.Thread(target=lambda part=names[k::8]: [storage.put(n, b"x") for n in part])
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert names_of(storage, "snapshots") == names


def test_immutable_put(storage):
    storage.put("snapshots/a.json", b"first")
    storage.put("snapshots/a.json", b"first")  # the same bytes again: a no-op (a retried request)
    with pytest.raises(FileExistsError):
        storage.put("snapshots/a.json", b"other")
    assert storage.read("snapshots/a.json") == b"first"
    w = storage.create("snapshots/a.json")
    w.write(b"second")
    with pytest.raises(FileExistsError):
        w.commit()
    assert storage.read("snapshots/a.json") == b"first"
    assert names_of(storage) == ["snapshots/a.json"]  # no temporary left behind


def test_replace_overwrites_atomically(storage):
    storage.put("config.json", b"v1")
    storage.replace("config.json", b"v2")
    assert storage.read("config.json") == b"v2"
    storage.write_atomic("config.json", b"v3")
    assert storage.read("config.json") == b"v3"


def test_writer_invisible_until_commit(storage):
    w = storage.create(PACK)
    chunks = [os.urandom(100_000) for _ in range(30)]
    for i, c in enumerate(chunks):
        w.write(bytearray(c))
        if i % 7 == 0:
            w.flush()
        assert not storage.exists(PACK)
    assert w.tell() == sum(map(len, chunks))
    assert names_of(storage) == []
    w.commit()
    assert storage.read(PACK) == b"".join(chunks)
    assert names_of(storage) == [PACK]


def test_flush_lets_caller_reuse_its_buffer(storage):
    buf = bytearray(b"a" * 1000)
    w = storage.create(PACK)
    w.write(buf)
    w.flush()
    buf[:] = b"b" * 1000
    w.write(memoryview(buf))
    w.commit()
    assert storage.read(PACK) == b"a" * 1000 + b"b" * 1000


def test_abort_leaves_nothing(storage):
    w = storage.create(PACK)
    w.write(os.urandom(1 << 20))
    w.flush()
    w.abort()
    w.abort()  # twice is fine
    assert not storage.exists(PACK)
    assert names_of(storage) == []
    storage.clean_temporary()
    assert names_of(storage) == []
    storage.put(PACK, b"now")  # the name is free
    assert storage.read(PACK) == b"now"


def test_large_object_multipart(make_storage, backend_kind):
    # a small single-PUT limit makes the S3 backend upload 12 MiB as 5 MiB parts
    storage = make_storage(single_put_max=6 << 20, part_size=5 << 20) if backend_kind != "local" else make_storage()
    data = os.urandom(12 << 20)
    w = storage.create(PACK)
    for i in range(0, len(data), 1 << 20):
        w.write(data[i:i + (1 << 20)])
        assert not storage.exists(PACK)
    w.commit()
    assert storage.size(PACK) == len(data)
    assert storage.read_range(PACK, (5 << 20) - 10, 20) == data[(5 << 20) - 10:(5 << 20) + 10]  # across a part
    assert storage.read(PACK) == data
    w2 = storage.create(PACK)
    w2.write(data)
    with pytest.raises(FileExistsError):
        w2.commit()


def test_every_name_character(storage):
    assert NAME_CHARS == "A-Za-z0-9._-"
    names = ["snapshots/ABCXYZabcxyz0189._-/catalog.sqlite-wal", "config.json", "catalog.sqlite",
             "locks/0123456789abcdef.json", PACK, "packs/ff/ff" + "9" * 30 + ".pack", "-/_/.x/..y/z.."]
    for n in names:
        storage.put(n, n.encode())
    assert names_of(storage) == sorted(names)
    for n in names:
        assert storage.read(n) == n.encode()


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\\b",
                                 "a b", "a/", "ä", "a\x00b", "a?b", "a%2f"])
def test_names_never_escape(storage, bad):
    with pytest.raises(ValueError):
        check_name(bad)
    for call in (lambda: storage.put(bad, b"x"), lambda: storage.create(bad), lambda: storage.read(bad),
                 lambda: storage.size(bad), lambda: storage.read_range(bad, 0, 1)):
        with pytest.raises(ValueError):
            call()
    assert names_of(storage) == []


def test_concurrent_writers_of_distinct_names(storage):
    blobs = {f"packs/{i:02x}/{i:02x}{'0' * 30}.pack": os.urandom(200_000 + i) for i in range(16)}
    errors = []

    def write(name, data):
        try:
            w = storage.create(name)
            for k in range(0, len(data), 50_000):
                w.write(data[k:k + 50_000])
            w.commit()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=item) for item in blobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert names_of(storage, "packs") == sorted(blobs)
    for name, data in blobs.items():
        assert storage.read(name) == data


def test_concurrent_creates_of_one_name_one_wins(storage):
    results = []

    def write(k):
        try:
            storage.put("locks/0123456789abcdef.json", f"writer {k}".encode())
            results.append(k)
        except FileExistsError:
            pass

    threads = [threading.Thread(target=write, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1
    assert storage.read("locks/0123456789abcdef.json") == f"writer {results[0]}".encode()


def test_names_filter(make_storage, backend_kind):
    import re
    st = make_storage()
    st.put("packs/ab/1.pack", b"1")
    st.put("other/file", b"2")
    if backend_kind == "local":
        from diskvault.storage.local import LocalStorage
        only = LocalStorage(st.root, re.compile(r"packs/.*"))
    else:
        from diskvault.storage.s3 import S3Storage
        only = S3Storage(st.endpoint, st.bucket, st.prefix, access_key_id="testkey", secret_access_key="testsecret",
                         names=re.compile(r"packs/.*"))
    assert names_of(only) == ["packs/ab/1.pack"]
    with pytest.raises(ValueError):
        only.delete("other/file")
    assert st.exists("other/file")
