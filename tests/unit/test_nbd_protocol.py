"""The NBD server at the byte level: option negotiation, replies, block status, refusals."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from helpers import random_bytes

from diskvault.ops.access.nbd_server import NbdServer, parse_bind
from diskvault.ops.snapshot import take_snapshot

MiB = 1 << 20
IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513


@pytest.fixture
def server(tmp_path, repo):
    img = tmp_path / "img"
    data = random_bytes(MiB, 1) + bytes(2 * MiB) + random_bytes(MiB // 2, 2)
    img.write_bytes(data)
    take_snapshot(repo, str(img), tags=["t"])
    srv = NbdServer(repo, "127.0.0.1", 0, log=lambda m: None)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv, data
    srv.stop()
    th.join(5)


class Client:
    def __init__(self, port: int, flags: int = 3) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        hello = self.recv(18)
        assert hello[:16] == b"NBDMAGICIHAVEOPT" and struct.unpack(">H", hello[16:])[0] == 3
        self.s.sendall(struct.pack(">I", flags))

    def recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            part = self.s.recv(n - len(buf))
            assert part, "server hung up"
            buf += part
        return bytes(buf)

    def opt(self, opt: int, data: bytes = b"") -> None:
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def reply(self) -> tuple[int, int, bytes]:
        magic, opt, kind, n = struct.unpack(">QIII", self.recv(20))
        assert magic == 0x3E889045565A9
        return opt, kind, self.recv(n)

    def replies(self) -> list[tuple[int, bytes]]:
        out = []
        while True:
            _, kind, data = self.reply()
            out.append((kind, data))
            if kind == 1 or kind & (1 << 31):
                return out

    def go(self, name: bytes, infos=()) -> list[tuple[int, bytes]]:
        self.opt(7, struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
                 + b"".join(struct.pack(">H", i) for i in infos))
        return self.replies()

    def cmd(self, cmd: int, offset: int, length: int, flags: int = 0, cookie: int = 1) -> None:
        self.s.sendall(struct.pack(">IHHQQI", REQ, flags, cmd, cookie, offset, length))

    def chunk(self) -> tuple[int, int, int, bytes]:
        magic, flags, kind, cookie, n = struct.unpack(">IHHQI", self.recv(20))
        assert magic == 0x668E33EF
        return flags, kind, cookie, self.recv(n)


def _name(s: str) -> bytes:
    return struct.pack(">I", len(s)) + s.encode()


def test_negotiation_and_unknowns(server):
    srv, data = server
    c = Client(srv.port)
    c.opt(3, b"x")  # LIST with data: invalid
    assert c.replies()[-1][0] == (1 << 31) + 3
    c.opt(3)
    names = [d[4:].decode() for k, d in c.replies() if k == 2]
    assert names[0] == "latest" and len(names) == 2
    c.opt(5)  # STARTTLS: unsupported
    assert c.replies()[-1][0] == (1 << 31) + 1
    c.opt(99)
    assert c.replies()[-1][0] == (1 << 31) + 1
    assert c.go(b"nosuch")[-1][0] == (1 << 31) + 6  # unknown export
    c.opt(10, _name("latest") + struct.pack(">I", 1) + _name("base:allocation"))  # before structured: invalid
    assert c.replies()[-1][0] == (1 << 31) + 3
    c.opt(8)
    assert c.replies() == [(1, b"")]
    c.opt(9, _name("latest") + struct.pack(">I", 0))  # LIST_META_CONTEXT, all
    reps = c.replies()
    assert (4, struct.pack(">I", 1) + b"base:allocation") in reps
    c.opt(10, _name("latest") + struct.pack(">I", 2) + _name("qemu:dirty-bitmap:x") + _name("base:allocation"))
    assert c.replies() == [(4, struct.pack(">I", 1) + b"base:allocation"), (1, b"")]
    reps = c.go(b"latest:t", infos=(3,))
    kind, info = reps[0]
    assert kind == 3 and struct.unpack(">HQH", info)[1] == len(data)
    assert any(k == 3 and d[:2] == b"\0\3" for k, d in reps)  # block sizes, as asked
    # transmission: a read with holes as hole chunks, then block status
    c.cmd(0, MiB - 10, 30, cookie=5)
    chunks = []
    while True:
        flags, kind, cookie, payload = c.chunk()
        assert cookie == 5
        chunks.append((kind, payload))
        if flags & 1:
            break
    got = bytearray(30)
    for kind, payload in chunks:
        assert kind == 1  # 20 zero bytes are too short to be worth a hole chunk
        off = struct.unpack(">Q", payload[:8])[0] - (MiB - 10)
        got[off : off + len(payload) - 8] = payload[8:]
    assert bytes(got) == data[MiB - 10 : MiB + 20]
    c.cmd(0, MiB // 2, 2 * MiB, cookie=6)
    kinds = []
    while True:
        flags, kind, _, payload = c.chunk()
        kinds.append(kind)
        if flags & 1:
            break
    assert 2 in kinds  # OFFSET_HOLE for the zero run
    c.cmd(0, MiB // 2, 2 * MiB, flags=4, cookie=7)  # DF: one data chunk
    flags, kind, _, payload = c.chunk()
    assert flags & 1 and kind == 1 and payload[8:] == data[MiB // 2 : MiB // 2 + 2 * MiB]
    c.cmd(7, 0, len(data), cookie=8)  # block status
    flags, kind, _, payload = c.chunk()
    assert kind == 5 and struct.unpack(">I", payload[:4])[0] == 1
    desc = [struct.unpack(">II", payload[i : i + 8]) for i in range(4, len(payload), 8)]
    assert sum(n for n, _ in desc) == len(data) and [f for _, f in desc] == [0, 3, 0]
    c.cmd(7, 0, len(data), flags=8, cookie=9)  # REQ_ONE
    _, _, _, payload = c.chunk()
    assert len(payload) == 12
    c.cmd(0, len(data) - 1, 2, cookie=10)  # past the end
    flags, kind, _, payload = c.chunk()
    assert kind == (1 << 15) + 1 and struct.unpack(">I", payload[:4])[0] == 22
    c.cmd(4, 0, 4096, cookie=11)  # TRIM
    _, kind, _, payload = c.chunk()
    assert struct.unpack(">I", payload[:4])[0] == 1  # EPERM
    c.cmd(2, 0, 0)
    assert c.s.recv(1) == b""


def test_export_name_option_and_no_zeroes(server):
    srv, data = server
    for flags, tail in ((3, 0), (1, 124)):
        c = Client(srv.port, flags)
        c.opt(1, b"latest")
        size, tflags = struct.unpack(">QH", c.recv(10))
        assert size == len(data) and tflags & 2
        assert c.recv(tail) == bytes(tail)
        c.cmd(0, 0, 16)
        magic, err, cookie = struct.unpack(">IIQ", c.recv(16))
        assert err == 0 and c.recv(16) == data[:16]
    c = Client(srv.port)
    c.opt(1, b"nosuch")  # EXPORT_NAME cannot be answered with an error: the server hangs up
    assert c.s.recv(1) == b""


def test_abort(server):
    srv, _ = server
    c = Client(srv.port)
    c.opt(2)
    assert c.reply()[1] == 1
    assert c.s.recv(1) == b""


def test_parse_bind():
    assert parse_bind("127.0.0.1:10809") == ("127.0.0.1", 10809)
    assert parse_bind("0") == ("127.0.0.1", 0)
    assert parse_bind("[::1]:99") == ("::1", 99)
    assert parse_bind("localhost") == ("localhost", 10809)
    assert parse_bind("unix:/run/dv.sock") == ("unix:/run/dv.sock", 0)
    with pytest.raises(Exception, match="port"):
        parse_bind("host:x")
    with pytest.raises(Exception, match="path"):
        parse_bind("unix:")
