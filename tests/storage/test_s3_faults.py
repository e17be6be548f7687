"""Faults of the S3 backend against a real SeaweedFS: a fault-injecting proxy in front of it
(503s, dropped connections, answers cut short), a server killed in the middle of an upload,
and the one-line errors for wrong credentials, a missing bucket, clock skew and an endpoint
nobody answers on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "servers"))

import faultproxy  # noqa: E402
import s3servers  # noqa: E402
from storage_helpers import BUCKET, s3_storage  # noqa: E402

from diskvault.errors import (RemoteAuthError, RemoteError, RemoteUnreachable,  # noqa: E402
                              RepositoryNotFound)
from diskvault.storage.s3 import S3Storage  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def seaweed(s3_servers):
    return s3_servers.get("seaweedfs")


@pytest.fixture
def proxy(seaweed):
    p = faultproxy.FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    yield p
    p.close()


def through(proxy, seaweed, **kw) -> S3Storage:
    st = s3_storage(seaweed, **kw)
    return S3Storage(proxy.endpoint, st.bucket, st.prefix, access_key_id=seaweed.access_key,
                     secret_access_key=seaweed.secret_key, retries=kw.get("retries", 4), retry_seconds=20,
                     backoff_seconds=0.05, timeout=20, **{k: v for k, v in kw.items() if k != "retries"})


@pytest.mark.parametrize("faults", [("503", "503", "503"), ("drop", "drop"), ("503", "drop", "503")])
def test_put_retried_through_5xx_and_dropped_connections(proxy, seaweed, faults):
    st = through(proxy, seaweed)
    proxy.inject(*faults)
    data = os.urandom(300_000)
    st.put("packs/aa/one.pack", data)
    assert proxy.injected == list(faults)  # every fault was met, and retried past
    assert st.read("packs/aa/one.pack") == data


def test_reads_retried_through_5xx_drops_and_cut_answers(proxy, seaweed):
    st = through(proxy, seaweed)
    data = os.urandom(2 << 20)
    st.put("packs/aa/one.pack", data)
    for faults in [("503", "503"), ("drop",), ("cut",)]:
        proxy.inject(*faults)
        assert st.read_range("packs/aa/one.pack", 1000, 1 << 20) == data[1000:1000 + (1 << 20)]
        assert proxy.injected[-len(faults):] == list(faults)
    proxy.inject("503", "drop")
    assert sorted(st.list("packs")) == ["packs/aa/one.pack"]
    proxy.inject("503")
    assert st.size("packs/aa/one.pack") == len(data)


def test_multipart_upload_retried(proxy, seaweed):
    st = through(proxy, seaweed, single_put_max=6 << 20, part_size=5 << 20)
    data = os.urandom(11 << 20)
    proxy.inject("503", "drop", "503")
    w = st.create("packs/bb/big.pack")
    w.write(data)
    w.commit()
    assert st.read("packs/bb/big.pack") == data


def test_persistent_503_is_a_remote_error(proxy, seaweed):
    st = through(proxy, seaweed, retries=2)
    proxy.inject(*["503"] * 10)
    with pytest.raises(RemoteError) as e:
        st.put("packs/cc/x.pack", b"x")
    assert "\n" not in str(e.value)
    assert len(proxy.injected) == 3  # the first attempt and two retries


def test_wrong_secret(seaweed):
    st = S3Storage(seaweed.endpoint, BUCKET, "t-wrong", access_key_id=seaweed.access_key,
                   secret_access_key="not-the-secret", retries=1, retry_seconds=5)
    for call in (lambda: st.put("config.json", b"x"), lambda: st.read("config.json"), lambda: list(st.list(""))):
        with pytest.raises(RemoteAuthError) as e:
            call()
        assert "refused the credentials" in str(e.value) and "\n" not in str(e.value)
    unknown = S3Storage(seaweed.endpoint, BUCKET, "t-wrong", access_key_id="nobody", secret_access_key="x",
                        retries=1, retry_seconds=5)
    with pytest.raises(RemoteAuthError):
        unknown.put("config.json", b"x")


@pytest.mark.parametrize("kind", ["seaweedfs", "ceph-rgw"])
def test_missing_bucket(s3_servers, kind):
    """Reads and lists name the missing bucket; so do writes on RGW (SeaweedFS creates a
    bucket on its first PUT, docs/remote.md)."""
    st = s3_storage(s3_servers.get(kind), bucket="no-such-bucket")
    calls = [lambda: st.read("config.json"), lambda: list(st.list("")), lambda: st.read_range("config.json", 0, 9)]
    if kind == "ceph-rgw":
        calls.append(lambda: st.put("config.json", b"x"))
    for call in calls:
        with pytest.raises(RepositoryNotFound) as e:
            call()
        assert "bucket 'no-such-bucket' does not exist" in str(e.value)


def test_unreachable_endpoint():
    port = s3servers.free_port()  # nobody listens there
    st = S3Storage(f"http://127.0.0.1:{port}", BUCKET, "", access_key_id="k", secret_access_key="s",
                   retries=1, retry_seconds=3, backoff_seconds=0.05, timeout=5)
    with pytest.raises(RemoteUnreachable) as e:
        st.put("config.json", b"x")
    assert f"cannot reach http://127.0.0.1:{port}" in str(e.value)


def test_clock_skew(seaweed):
    """A client clock two hours behind the server's (libfaketime): the server refuses the
    signature's date, and the error says to set the clock."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from diskvault.storage.s3 import S3Storage;"
            "st = S3Storage(sys.argv[2], 'contract', 't-skew', access_key_id='testkey', "
            "secret_access_key='testsecret', retries=1, retry_seconds=5)\n"
            "try:\n  st.put('config.json', b'x')\n"
            "except Exception as e:\n  print(type(e).__name__, e)")
    r = subprocess.run(["faketime", "-f", "-2h", sys.executable, "-c", code, SRC, seaweed.endpoint],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("RemoteAuthError "), (r.stdout, r.stderr[-2000:])
    assert "clock" in r.stdout


@pytest.mark.parametrize("upload", ["single", "multipart"])
def test_server_killed_mid_upload(tmp_path, upload):
    """SIGKILL of the server when part of an upload has gone: the put fails with a remote
    error, nothing is visible once the server is back, and the next put of the name works."""
    srv = s3servers.start_seaweed(tmp_path / "weed")
    proxy = None
    try:
        srv.make_bucket("crash")
        proxy = faultproxy.FaultProxy(int(srv.endpoint.rsplit(":", 1)[1]))
        kw = {"single_put_max": 6 << 20, "part_size": 5 << 20} if upload == "multipart" else {}
        st = S3Storage(proxy.endpoint, "crash", "repo", access_key_id=srv.access_key, secret_access_key=srv.secret_key,
                       retries=2, retry_seconds=5, backoff_seconds=0.05, timeout=10, **kw)
        data = os.urandom(12 << 20)
        proxy.on_upload(7 << 20, srv.kill)  # past the first part of a multipart upload
        w = st.create("packs/dd/crash.pack")
        w.write(data)
        with pytest.raises(RemoteError):
            w.commit()
        assert not srv.alive()
        proxy.close()
        srv = s3servers.start_seaweed(tmp_path / "weed", ports=srv.ports)
        direct = S3Storage(srv.endpoint, "crash", "repo", access_key_id=srv.access_key,
                           secret_access_key=srv.secret_key, retries=2, retry_seconds=5, **kw)
        assert not direct.exists("packs/dd/crash.pack")
        assert list(direct.list("")) == []
        w = direct.create("packs/dd/crash.pack")
        w.write(data)
        w.commit()
        assert direct.read("packs/dd/crash.pack") == data
    finally:
        if proxy:
            proxy.close()
        srv.stop()
