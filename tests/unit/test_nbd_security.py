"""The NBD server's defences at the byte level: FORCEDTLS negotiation, the connection limit,
the handshake timeout, loopback-only binds without TLS, owner-only Unix sockets."""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import struct
import threading

import pytest
from serve_certs import make_certs
from test_nbd_protocol import Client, _name

from helpers import random_bytes

from diskvault.errors import SourceError, UsageError
from diskvault.ops.access.nbd_server import NbdServer, is_loopback, tls_context
from diskvault.ops.snapshot import take_snapshot

MiB = 1 << 20
TLS_REQD, INVALID, UNSUP = (1 << 31) + 5, (1 << 31) + 3, (1 << 31) + 1


@pytest.fixture
def image(tmp_path, repo):
    data = random_bytes(MiB, 3) + bytes(MiB) + random_bytes(3 * MiB + 5, 4)
    (tmp_path / "img").write_bytes(data)
    take_snapshot(repo, str(tmp_path / "img"))
    return data


@pytest.fixture
def serving(repo):
    """serving(**kwargs) -> a running in-process NbdServer on 127.0.0.1; stopped at the end."""
    started = []

    def start(host="127.0.0.1", **kwargs):
        logs: list[str] = []
        srv = NbdServer(repo, host, 0, log=logs.append, **kwargs)
        th = threading.Thread(target=srv.serve_forever, daemon=True)
        th.start()
        started.append((srv, th))
        srv.logs = logs
        return srv

    yield start
    for srv, th in started:
        srv.stop()
        th.join(5)


def _stop_when_idle(srv) -> None:
    """Stop once every connection's thread has ended (each counts its own timeout as it ends):
    stop() then reports everything since the last summary line."""
    for _ in range(200):
        if not srv._conns:
            break
        threading.Event().wait(0.05)
    srv.stop()


def _read(c, length: int) -> bytes:
    c.cmd(0, 0, length, flags=4, cookie=3)  # DF: one data chunk
    flags, kind, cookie, payload = c.chunk()
    assert (flags & 1, kind, cookie) == (1, 1, 3)
    return payload[8:]


def test_forced_tls_negotiation(tmp_path, image, serving):
    """With TLS, every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, EXPORT_NAME
    closes the connection; after STARTTLS the whole protocol runs inside TLS."""
    certs = make_certs(tmp_path / "certs")
    srv = serving(tls=tls_context(str(certs["server"])))
    c = Client(srv.port)
    for opt, data in ((3, b""), (7, _name("latest") + b"\0\0"), (8, b""), (99, b"")):  # LIST, GO, STRUCTURED, unknown
        c.opt(opt, data)
        assert c.replies()[-1][0] == TLS_REQD
    c.opt(5, b"x")  # STARTTLS with data
    assert c.replies()[-1][0] == INVALID
    c.opt(5)
    assert c.replies() == [(1, b"")]
    client = ssl.create_default_context(cafile=str(certs["client"] / "ca-cert.pem"))
    c.s = client.wrap_socket(c.s, server_hostname="127.0.0.1")
    assert c.s.version() in ("TLSv1.2", "TLSv1.3")
    c.opt(5)  # TLS is up already
    assert c.replies()[-1][0] == INVALID
    c.opt(8)
    assert c.replies() == [(1, b"")]
    assert c.go(b"latest")[-1][0] == 1
    assert _read(c, 3 * MiB) == image[: 3 * MiB]  # more than one joined TLS write
    c.cmd(2, 0, 0)
    c = Client(srv.port)
    c.opt(1, b"latest")  # EXPORT_NAME cannot be refused with an error: the server hangs up
    assert c.s.recv(1) == b""
    c = Client(srv.port)
    c.opt(2)  # ABORT is answered before TLS too
    assert c.reply()[1] == 1


def test_without_tls_starttls_is_unsupported(image, serving):
    srv = serving()
    c = Client(srv.port)
    c.opt(5)
    assert c.replies()[-1][0] == UNSUP
    c.opt(8)
    assert c.replies() == [(1, b"")]  # plain negotiation goes on


def test_tls_verify_peer_needs_a_client_certificate(tmp_path, image, serving):
    certs = make_certs(tmp_path / "certs")
    srv = serving(tls=tls_context(str(certs["server"]), verify_peer=True))
    results = {}
    for folder in (certs["client"], certs["client-cert"]):
        c = Client(srv.port)
        c.opt(5)
        assert c.replies() == [(1, b"")]
        ctx = ssl.create_default_context(cafile=str(folder / "ca-cert.pem"))
        if (folder / "client-cert.pem").exists():
            ctx.load_cert_chain(folder / "client-cert.pem", folder / "client-key.pem")
        try:
            c.s = ctx.wrap_socket(c.s, server_hostname="localhost")
            c.opt(8)  # TLS 1.3: the server's refusal of the handshake shows on the first read
            results[folder.name] = c.replies()
        except (ssl.SSLError, ConnectionError, AssertionError) as exc:  # AssertionError: "server hung up"
            results[folder.name] = type(exc).__name__
        c.s.close()
    assert results["client-cert"] == [(1, b"")]
    assert isinstance(results["client"], str), results
    _stop_when_idle(srv)
    assert any("TLS handshake with 127.0.0.1 failed" in m for m in srv.logs)


def test_tls_certificates_folder_errors(tmp_path):
    with pytest.raises(SourceError, match="no such directory"):
        tls_context(str(tmp_path / "nope"))
    (tmp_path / "d").mkdir()
    with pytest.raises(SourceError, match="missing server-cert.pem, server-key.pem"):
        tls_context(str(tmp_path / "d"))
    (tmp_path / "d" / "server-cert.pem").write_text("not a certificate")
    (tmp_path / "d" / "server-key.pem").write_text("not a key")
    with pytest.raises(SourceError, match="cannot load the certificates"):
        tls_context(str(tmp_path / "d"))


def test_connection_limit_and_handshake_timeout(image, serving):
    """Two idle connections fill --max-connections 2: a third is closed at once, unanswered;
    the idle ones are closed when --timeout passes, and then a client is served again."""
    srv = serving(max_connections=2, timeout=1)
    idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(2)]
    for s in idle:
        assert s.recv(18)[:8] == b"NBDMAGIC"  # accepted and greeted
    extra = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    assert extra.recv(18) == b""  # over the limit: closed, no greeting
    for s in idle:
        assert s.recv(1) == b""  # no export chosen within the timeout: closed by the server
    c = Client(srv.port)
    c.opt(8)
    assert c.replies() == [(1, b"")]
    assert c.go(b"latest")[-1][0] == 1
    assert _read(c, 4096) == image[:4096]
    c.cmd(2, 0, 0)  # DISC
    for s in idle + [extra, c.s]:
        s.close()
    _stop_when_idle(srv)
    text = "\n".join(srv.logs)
    assert "over the limit of 2 (--max-connections)" in text
    assert "chose no export within 1 s (--timeout)" in text


def test_transmission_is_not_timed_out(image, serving):
    """Once an export is chosen the handshake deadline no longer applies (kernel clients idle)."""
    srv = serving(timeout=1)
    c = Client(srv.port)
    c.opt(8)
    c.replies()
    assert c.go(b"latest")[-1][0] == 1
    late = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    assert late.recv(18)[:8] == b"NBDMAGIC"
    assert late.recv(1) == b""  # this one is timed out meanwhile ...
    assert _read(c, 4096) == image[:4096]  # ... the one in transmission is still served


def test_non_loopback_tcp_needs_tls_or_insecure(tmp_path, repo, image, serving):
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("0.0.0.0") and not is_loopback("::")
    assert not is_loopback("192.168.1.4")
    with pytest.raises(UsageError, match="not a loopback address.*--tls.*--insecure"):
        NbdServer(repo, "0.0.0.0", 0)
    srv = serving("0.0.0.0", insecure=True)
    assert Client(srv.port)  # served, in clear, as asked
    certs = make_certs(tmp_path / "certs")
    srv = serving("0.0.0.0", tls=tls_context(str(certs["server"])))
    assert srv.url.startswith("nbds://0.0.0.0:")


def test_unix_socket_is_owner_only(tmp_path, image, serving):
    old = os.umask(0)  # the widest umask: the socket must still be 0600
    try:
        srv = serving(f"unix:{tmp_path / 's.sock'}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "s.sock").st_mode) == 0o600
    s = socket.socket(socket.AF_UNIX)
    s.connect(srv.socket_path)
    assert s.recv(8) == b"NBDMAGIC"
    s.close()


def test_handshake_deadline_covers_the_whole_negotiation(tmp_path, image, serving):
    """A client that keeps negotiating (each option answered well within --timeout) is still
    closed once --timeout has passed since it connected; so is one that stops after STARTTLS."""
    certs = make_certs(tmp_path / "certs")
    srv = serving(timeout=1, tls=tls_context(str(certs["server"])))
    slow = Client(srv.port)
    answered = 0
    with pytest.raises((AssertionError, ConnectionError)):  # "server hung up" or a reset
        for _ in range(200):  # 200 x 0.2 s: far past the 1 s deadline
            slow.opt(99)
            assert slow.replies()[-1][0] == TLS_REQD
            answered += 1
            threading.Event().wait(0.2)
    assert answered >= 1
    mute = Client(srv.port)
    mute.opt(5)
    assert mute.replies() == [(1, b"")]
    assert mute.s.recv(1) == b""  # no TLS handshake: closed when the deadline passes
    _stop_when_idle(srv)
    late = re.findall(r"closed (\d+) connection\(s\) that chose no export within 1 s \(--timeout\)", "\n".join(srv.logs))
    assert sum(map(int, late)) == 2, srv.logs
    assert not any("TLS handshake" in m for m in srv.logs)
