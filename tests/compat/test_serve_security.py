"""`diskvault serve` under attack and behind TLS, with real clients: a flood of connections,
running out of file descriptors, nbds:// with x509 certificates, non-loopback binds, and an
owner-only Unix socket checked as an unprivileged user."""

from __future__ import annotations

import os
import resource
import select
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager

import pytest
from access_fixtures import nbd_server
from serve_certs import make_certs

from helpers import random_bytes, run_cli, tool

MiB = 1 << 20
FLOOD = 2000
STEP = 64 << 10  # bytes of the copy read between two batches of the flood
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _fd_limit(soft: int, hard: int | None = None):
    """A preexec_fn giving the server an open-file limit (soft, hard) (hard unchanged if None)."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                                                    if hard is None else hard))
    return apply


@contextmanager
def _fds_for(n: int):
    """Let this test process hold N more sockets (raised soft limit, restored at the end)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 1024
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the open-file hard limit {hard} is below the {need} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _stderr_until(proc: subprocess.Popen, text: str, seconds: float = 60) -> str:
    """Read the server's stderr (raw, unbuffered) until it holds TEXT or ends; returns what was read."""
    fd, buf = proc.stderr.fileno(), b""
    deadline = time.monotonic() + seconds
    while text.encode() not in buf and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            part = os.read(fd, 65536)
            if not part:
                break
            buf += part
    return buf.decode(errors="replace")


def _snapshot(tmp_path, repo_path, size: int, seed: int):
    img = tmp_path / f"img-{seed}.img"
    img.write_bytes(random_bytes(size, seed))
    run_cli("snapshot", "-r", repo_path, img)
    return img


def test_flood_of_connections_while_nbdcopy_reads(tmp_path, repo_path):
    """2,000 idle connections against a server with the usual 1024 open-file soft limit, while
    nbdcopy copies a snapshot: the copy is bit-identical, the flood is refused past
    --max-connections (64 by default), the server stays up and serves new clients after."""
    img = _snapshot(tmp_path, repo_path, 24 * MiB, 21)
    with nbd_server(repo_path, "127.0.0.1:0", preexec_fn=_fd_limit(1024)) as (proc, port):
        copy = subprocess.Popen([tool("nbdcopy"), f"nbd://127.0.0.1:{port}/latest", "-"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        flood: list[socket.socket] = []
        try:
            got = bytearray(copy.stdout.read(STEP))  # nbdcopy is connected and copying
            with _fds_for(FLOOD):
                deadline = time.monotonic() + 120
                while len(flood) < FLOOD and time.monotonic() < deadline:
                    try:
                        flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                    except OSError:  # refused: the server is gone
                        break
                    if len(flood) % 100 == 0:
                        got += copy.stdout.read(STEP)  # the copy goes on during the flood
                assert len(flood) == FLOOD, f"server stopped accepting after {len(flood)} connections"
                greeted = 0
                for s in flood:  # each is greeted (within the limit) or closed at once (over it)
                    greeted += len(s.recv(18)) == 18
                assert 0 < greeted <= 64
                got += copy.stdout.read()
                assert copy.wait(60) == 0, copy.stderr.read().decode()
                assert got == img.read_bytes()
                assert proc.poll() is None
        finally:
            for s in flood:
                s.close()
            if copy.poll() is None:
                copy.kill()
            copy.wait()
        for _ in range(100):  # the flood's slots are freed as the server sees the closes
            out = subprocess.run([tool("nbdinfo"), "--size", f"nbd://127.0.0.1:{port}/latest"], capture_output=True,
                                 text=True)
            if out.returncode == 0:
                break
            time.sleep(0.1)
        assert out.stdout.strip() == str(img.stat().st_size), out.stderr
        assert proc.poll() is None
    assert proc.returncode == 0
    log = proc.stderr.read().decode()
    assert "over the limit of 64 (--max-connections)" in log and "Traceback" not in log


def test_running_out_of_file_descriptors_is_not_fatal(tmp_path, repo_path):
    """With a hard limit of 64 open files, fewer than the default 64 connections fit: a flood
    makes accept fail with EMFILE; the server warns at start, reports the failures, keeps
    running, and serves a full copy once the flood is gone."""
    img = _snapshot(tmp_path, repo_path, 6 * MiB, 22)
    with nbd_server(repo_path, "127.0.0.1:0", preexec_fn=_fd_limit(64, 64)) as (proc, port):
        flood = []
        try:
            for _ in range(150):
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            log = _stderr_until(proc, "could not accept")
            assert proc.poll() is None, log
            assert "the open-file limit (64) is low for 64 connections" in log
            assert "could not accept" in log and "Too many open files" in log, log
        finally:
            for s in flood:
                s.close()
        copy = tmp_path / "copy.img"
        out = subprocess.run([tool("nbdcopy"), f"nbd://127.0.0.1:{port}/latest", str(copy)], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        assert copy.read_bytes() == img.read_bytes()
        assert proc.poll() is None


def test_tls_with_nbdinfo_nbdcopy_and_qemu_img(tmp_path, repo_path):
    """--tls: nbdinfo, nbdcopy and qemu-img read over nbds:// with tls-certificates; plain
    clients are refused (TLS required); --json states the settings."""
    certs = make_certs(tmp_path / "certs")
    img = _snapshot(tmp_path, repo_path, 5 * MiB + 77, 23)
    with nbd_server(repo_path, "127.0.0.1:0", "--tls", "--tls-certificates", str(certs["server"])) as (proc, port):
        assert proc.info["url"] == f"nbds://127.0.0.1:{port}"
        assert (proc.info["tls"], proc.info["tls_verify_peer"]) == (True, False)
        assert (proc.info["max_connections"], proc.info["timeout"]) == (64, 30)
        uri = f"nbds://127.0.0.1:{port}/latest?tls-certificates={certs['client']}"
        out = subprocess.run([tool("nbdinfo"), "--json", uri], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert '"TLS": true' in out.stdout and f'"export-size": {img.stat().st_size}' in out.stdout
        copy = tmp_path / "copy.img"
        subprocess.run([tool("nbdcopy"), uri, str(copy)], check=True, capture_output=True)
        assert copy.read_bytes() == img.read_bytes()
        out = subprocess.run([tool("qemu-img"), "compare", "--object",
                              f"tls-creds-x509,id=tls0,dir={certs['client']},endpoint=client", "--image-opts",
                              f"driver=file,filename={img}",
                              f"driver=nbd,host=127.0.0.1,port={port},export=latest,tls-creds=tls0"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "Images are identical" in out.stdout, out.stdout + out.stderr
        plain = subprocess.run([tool("nbdinfo"), f"nbd://127.0.0.1:{port}/latest"], capture_output=True, text=True)
        assert plain.returncode != 0 and "export-size" not in plain.stdout
        plain = subprocess.run([tool("qemu-img"), "info", f"nbd://127.0.0.1:{port}/latest"], capture_output=True,
                               text=True)
        assert plain.returncode != 0 and "TLS negotiation required" in plain.stderr
        assert "this server requires TLS" in plain.stderr  # our message, relayed by qemu
        wrong_ca = make_certs(tmp_path / "other")["client"]  # a server certificate the client cannot trust
        out = subprocess.run([tool("nbdinfo"), f"nbds://127.0.0.1:{port}/latest?tls-certificates={wrong_ca}"],
                             capture_output=True, text=True)
        assert out.returncode != 0
        assert proc.poll() is None


def test_tls_verify_peer(tmp_path, repo_path):
    """--tls-verify-peer: only a client with a certificate signed by ca-cert.pem reads."""
    certs = make_certs(tmp_path / "certs")
    img = _snapshot(tmp_path, repo_path, MiB, 24)
    with nbd_server(repo_path, "127.0.0.1:0", "--tls", "--tls-certificates", str(certs["server"]),
                    "--tls-verify-peer") as (proc, port):
        assert proc.info["tls_verify_peer"] is True
        url = f"nbds://127.0.0.1:{port}/latest?tls-certificates="
        out = subprocess.run([tool("nbdinfo"), "--size", url + str(certs["client"])], capture_output=True, text=True)
        assert out.returncode != 0
        out = subprocess.run([tool("nbdinfo"), "--size", url + str(certs["client-cert"])], capture_output=True,
                             text=True)
        assert out.returncode == 0 and out.stdout.strip() == str(img.stat().st_size), out.stderr
    assert "TLS handshake with 127.0.0.1 failed" in proc.stderr.read().decode()


def test_non_loopback_needs_tls_or_insecure(tmp_path, repo_path):
    _snapshot(tmp_path, repo_path, MiB, 25)
    out = run_cli("serve", "-r", repo_path, "--bind", "0.0.0.0:0", check=False, timeout=60)
    err = out.stderr.decode()
    assert out.returncode == 2 and err.count("\n") == 1, err
    assert "not a loopback address" in err and "--tls" in err and "--insecure" in err
    with nbd_server(repo_path, "0.0.0.0:0", "--insecure") as (proc, port):
        out = subprocess.run([tool("nbdinfo"), "--size", f"nbd://127.0.0.1:{port}/latest"], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
    certs = make_certs(tmp_path / "certs")
    with nbd_server(repo_path, "0.0.0.0:0", "--tls", "--tls-certificates", str(certs["server"])) as (proc, port):
        assert proc.info["url"].startswith("nbds://0.0.0.0:")
    for args, code, text in ((["--tls"], 2, "--tls-certificates"),
                             (["--tls-certificates", str(certs["server"])], 2, "add --tls"),
                             (["--tls", "--tls-certificates", str(tmp_path)], 5, "missing server-cert.pem"),
                             (["--max-connections", "0"], 2, "--max-connections"),
                             (["--timeout", "0"], 2, "--timeout")):
        out = run_cli("serve", "-r", repo_path, "--bind", "127.0.0.1:0", *args, check=False, timeout=60)
        assert out.returncode == code and text in out.stderr.decode(), (args, out.stderr)


def test_unix_socket_is_owner_only_for_real_users(tmp_path, repo_path):
    """Even under umask 0 the socket is 0600: root reads through it, `nobody` is refused."""
    img = _snapshot(tmp_path, repo_path, MiB, 26)
    folder = tempfile.mkdtemp(prefix="dv-serve-", dir="/tmp")  # tmp_path's parents are 0700
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "nbd.sock")
    try:
        with nbd_server(repo_path, f"unix:{path}", umask=0) as (proc, _):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            uri = f"nbd+unix:///latest?socket={path}"
            out = subprocess.run([tool("nbdinfo"), "--size", uri], capture_output=True, text=True)
            assert out.returncode == 0 and out.stdout.strip() == str(img.stat().st_size), out.stderr
            out = subprocess.run([*NOBODY, tool("nbdinfo"), "--size", uri], capture_output=True, text=True)
            assert out.returncode != 0 and "Permission denied" in out.stderr, out.stdout + out.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)
