"""One NBD client connection: the fixed-newstyle handshake (options, STARTTLS), then the
transmission phase (READ, BLOCK_STATUS, ...); see nbd_server.py for the design."""

from __future__ import annotations

import errno
import socket
import ssl
import struct
from typing import TYPE_CHECKING

from ...errors import DiskvaultError
from .nbd_protocol import (
    ALLOCATION, ALLOCATION_ID, CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_REQ_ONE, CMD_FLUSH,
    CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, C_FIXED_NEWSTYLE, C_NO_ZEROES, Export, FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES, IHAVEOPT, INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_EXPORT, INFO_NAME, IOV_BATCH, MAX_EXTENTS,
    MAX_OPTION, MAX_REQUEST, MIN_HOLE, NBDMAGIC, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST,
    OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_STARTTLS, OPT_STRUCTURED_REPLY, PREFERRED_BLOCK,
    REPLY_FLAG_DONE, REPLY_MAGIC, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR, REPLY_TYPE_NONE,
    REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REP_ACK, REP_ERR_INVALID, REP_ERR_TLS_REQD, REP_ERR_TOO_BIG,
    REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER, REQUEST, REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC, STATE_HOLE, STATE_ZERO, STRUCTURED_REPLY_MAGIC, TF_CAN_MULTI_CONN, TF_HAS_FLAGS,
    TF_READ_ONLY, TF_SEND_CACHE, TF_SEND_DF, TF_SEND_FLUSH, TLS_WRITE, _Closed, _zeros,
)
from .snapshot_reader import Stream

if TYPE_CHECKING:
    from .nbd_server import NbdServer


class _Connection:
    def __init__(self, server: NbdServer, sock: socket.socket, peer, deadline: float | None) -> None:
        self.server = server
        self.sock = sock  # the SSLSocket once TLS is up
        self.peer = peer
        self.deadline = deadline  # handshake deadline (time.monotonic); None in transmission
        self.timed_out = False  # closed for not choosing an export in time
        self.tls = False
        self.structured = False
        self.meta = False  # base:allocation selected
        self.no_zeroes = False
        self.stream = Stream()
        self.rfile = sock.makefile("rb", buffering=64 << 10)  # many request headers per recv

    def abort(self) -> None:
        """Shut the socket down from another thread: the connection's blocked read returns."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # the file descriptor, even under TLS
        except OSError:
            pass

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def start_tls(self) -> None:
        """Upgrade after NBD_OPT_STARTTLS was acknowledged; the handshake is bounded by the
        socket timeout and the connection's deadline. Raises _Closed if it fails."""
        self.rfile.close()  # the client waits for our ACK: nothing can be buffered past the option
        tls = self.server.tls.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        with self.server._lock:
            self.sock = tls
        try:
            tls.do_handshake()
        except TimeoutError:
            raise
        except (ssl.SSLError, OSError) as exc:
            if not self.timed_out:
                self.server.log(f"TLS handshake with {self.peer[0]} failed: {getattr(exc, 'reason', None) or exc}")
            raise _Closed from None
        self.rfile = tls.makefile("rb", buffering=64 << 10)
        self.tls = True

    # --- socket helpers -------------------------------------------------------------------
    def recv(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) < n:
            raise _Closed
        return data

    def drain(self, n: int) -> None:
        while n:
            part = self.rfile.read(min(n, 1 << 20))
            if not part:
                raise _Closed
            n -= len(part)

    def send(self, bufs: list) -> None:
        if self.tls:  # SSLSocket has no sendmsg: joined writes of up to TLS_WRITE bytes
            group: list = []
            size = 0
            for b in bufs:
                group.append(b)
                size += len(b)
                if size >= TLS_WRITE:
                    self.sock.sendall(b"".join(group))
                    group, size = [], 0
            if size:
                self.sock.sendall(b"".join(group))
            return
        bufs = [b for b in bufs if len(b)]
        while bufs:
            batch = bufs[:IOV_BATCH]
            sent = self.sock.sendmsg(batch)
            done = 0
            while done < len(batch) and sent >= len(batch[done]):
                sent -= len(batch[done])
                done += 1
            bufs = bufs[done:]
            if sent:
                bufs[0] = memoryview(bufs[0])[sent:]

    def reply_opt(self, opt: int, kind: int, data: bytes = b"") -> None:
        self.send([struct.pack(">QIII", REPLY_MAGIC, opt, kind, len(data)), data])

    # --- handshake ---------------------------------------------------------------------------
    def run(self) -> None:
        self.send([struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)])
        (cflags,) = struct.unpack(">I", self.recv(4))
        if not cflags & C_FIXED_NEWSTYLE:
            raise _Closed  # oldstyle-only or non-fixed clients are not served
        self.no_zeroes = bool(cflags & C_NO_ZEROES)
        export = None
        while export is None:
            export = self.option()
        with self.server._lock:
            self.deadline = None
        self.sock.settimeout(None)  # transmission: a client may idle as long as it likes
        self.transmission(export)

    def tflags(self) -> int:
        flags = TF_HAS_FLAGS | TF_READ_ONLY | TF_SEND_FLUSH | TF_CAN_MULTI_CONN | TF_SEND_CACHE
        return flags | (TF_SEND_DF if self.structured else 0)

    def option(self) -> Export | None:
        magic, opt, length = struct.unpack(">QII", self.recv(16))
        if magic != IHAVEOPT:
            raise _Closed
        if length > MAX_OPTION:
            if opt == OPT_EXPORT_NAME:
                raise _Closed
            self.drain(length)
            self.reply_opt(opt, REP_ERR_TOO_BIG)
            return None
        data = self.recv(length)
        if opt == OPT_STARTTLS:
            if self.server.tls is None:
                self.reply_opt(opt, REP_ERR_UNSUP, b"this server was started without --tls")
            elif self.tls or length:
                self.reply_opt(opt, REP_ERR_INVALID, b"TLS is already up" if self.tls else b"STARTTLS takes no data")
            else:
                self.reply_opt(opt, REP_ACK)
                self.start_tls()
            return None
        if self.server.tls is not None and not self.tls and opt != OPT_ABORT:  # FORCEDTLS
            if opt == OPT_EXPORT_NAME:  # cannot be answered with an error
                raise _Closed
            self.reply_opt(opt, REP_ERR_TLS_REQD, b"this server requires TLS: connect with nbds:// and tls-certificates")
            return None
        if opt == OPT_EXPORT_NAME:
            try:
                export = self.server.export(data.decode("utf-8", "replace"))
            except DiskvaultError as exc:
                self.server.log(f"refused export {data.decode('utf-8', 'replace')!r}: {exc}")
                raise _Closed from None
            tail = b"" if self.no_zeroes else bytes(124)
            self.send([struct.pack(">QH", export.size, self.tflags()), tail])
            return export
        if opt == OPT_ABORT:
            self.reply_opt(opt, REP_ACK)
            raise _Closed
        if opt == OPT_LIST:
            if length:
                self.reply_opt(opt, REP_ERR_INVALID)
                return None
            for name in self.server.export_names():
                raw = name.encode()
                self.reply_opt(opt, REP_SERVER, struct.pack(">I", len(raw)) + raw)
            self.reply_opt(opt, REP_ACK)
            return None
        if opt in (OPT_INFO, OPT_GO):
            return self.info_go(opt, data)
        if opt == OPT_STRUCTURED_REPLY:
            if length:
                self.reply_opt(opt, REP_ERR_INVALID)
                return None
            self.structured = True
            self.reply_opt(opt, REP_ACK)
            return None
        if opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
            self.meta_context(opt, data)
            return None
        self.reply_opt(opt, REP_ERR_UNSUP)
        return None

    def _name(self, data: bytes, pos: int = 0) -> tuple[str, int]:
        if len(data) < pos + 4:
            raise ValueError
        (n,) = struct.unpack_from(">I", data, pos)
        if len(data) < pos + 4 + n:
            raise ValueError
        return data[pos + 4 : pos + 4 + n].decode("utf-8", "replace"), pos + 4 + n

    def info_go(self, opt: int, data: bytes) -> Export | None:
        try:
            name, pos = self._name(data)
            (nreq,) = struct.unpack_from(">H", data, pos)
            if len(data) != pos + 2 + 2 * nreq:
                raise ValueError
            reqs = set(struct.unpack_from(f">{nreq}H", data, pos + 2))
        except (ValueError, struct.error):
            self.reply_opt(opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO request")
            return None
        try:
            export = self.server.export(name)
        except DiskvaultError as exc:
            self.server.log(f"refused export {name!r}: {exc}")
            self.reply_opt(opt, REP_ERR_UNKNOWN, f"unknown export {name!r}: {exc}".encode())
            return None
        self.reply_opt(opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, export.size, self.tflags()))
        if INFO_NAME in reqs:
            self.reply_opt(opt, REP_INFO, struct.pack(">H", INFO_NAME) + export.snap.id.encode())
        if INFO_DESCRIPTION in reqs:
            self.reply_opt(opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + export.description.encode())
        if INFO_BLOCK_SIZE in reqs:
            self.reply_opt(opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_REQUEST))
        self.reply_opt(opt, REP_ACK)
        return export if opt == OPT_GO else None

    def meta_context(self, opt: int, data: bytes) -> None:
        try:
            name, pos = self._name(data)
            (count,) = struct.unpack_from(">I", data, pos)
            pos += 4
            queries = []
            for _ in range(count):
                q, pos = self._name(data, pos)
                queries.append(q)
            if pos != len(data):
                raise ValueError
        except (ValueError, struct.error):
            self.reply_opt(opt, REP_ERR_INVALID, b"malformed meta context request")
            return
        if opt == OPT_SET_META_CONTEXT and not self.structured:
            self.reply_opt(opt, REP_ERR_INVALID, b"negotiate NBD_OPT_STRUCTURED_REPLY first")
            return
        try:
            self.server.export(name)
        except DiskvaultError as exc:
            self.reply_opt(opt, REP_ERR_UNKNOWN, f"unknown export {name!r}: {exc}".encode())
            return
        if opt == OPT_LIST_META_CONTEXT and not queries:
            hit = True
        else:
            hit = any(q == ALLOCATION or (opt == OPT_LIST_META_CONTEXT and q == "base:") for q in queries)
        if opt == OPT_SET_META_CONTEXT:
            self.meta = hit
        if hit:
            self.reply_opt(opt, REP_META_CONTEXT, struct.pack(">I", ALLOCATION_ID) + ALLOCATION.encode())
        self.reply_opt(opt, REP_ACK)

    # --- transmission ---------------------------------------------------------------------------
    def transmission(self, ex: Export) -> None:
        """Serve requests one after the other until DISC or EOF (see the module docstring)."""
        while True:
            magic, flags, cmd, cookie, offset, length = REQUEST.unpack(self.recv(28))
            if magic != REQUEST_MAGIC:
                raise _Closed
            if cmd == CMD_DISC:
                return
            if cmd == CMD_WRITE:
                self.drain(length)
            self.handle(ex, flags, cmd, cookie, offset, length)

    def handle(self, ex: Export, flags: int, cmd: int, cookie: int, offset: int, length: int) -> None:
        if cmd == CMD_READ and offset + length <= ex.size and length <= MAX_REQUEST:
            self.read(ex, flags, cookie, offset, length)
            return
        if cmd in (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES):
            self.error(cookie, errno.EPERM, "the export is read-only")
            return
        if cmd == CMD_FLUSH:
            self.done(cookie)
            return
        if cmd not in (CMD_READ, CMD_CACHE, CMD_BLOCK_STATUS):
            self.error(cookie, errno.EINVAL, f"unknown command {cmd}")
            return
        if offset + length > ex.size:
            self.error(cookie, errno.EINVAL, "request past the end of the export")
            return
        if cmd == CMD_CACHE:
            ex.reader.prefetch(ex.base + offset, length)
            self.done(cookie)
            return
        if cmd == CMD_BLOCK_STATUS:
            self.block_status(ex, cookie, flags, offset, length)
            return
        self.error(cookie, errno.EOVERFLOW if self.structured else errno.EINVAL, "read larger than 32 MiB")

    def read(self, ex: Export, flags: int, cookie: int, offset: int, length: int) -> None:
        try:
            segs = ex.reader.segments(ex.base + offset, length, self.stream)
        except (DiskvaultError, OSError) as exc:  # damaged or unreadable data: EIO, keep serving
            self.server.log(f"read of {length} bytes at {offset} of export {ex.name!r} failed: {exc}")
            self.error(cookie, errno.EIO, str(exc)[:512])
            return
        self.read_reply(ex, cookie, flags, segs)

    def done(self, cookie: int) -> None:
        if self.structured:
            self.send([struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)])
        else:
            self.send([struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie)])

    def error(self, cookie: int, code: int, message: str) -> None:
        if self.structured:
            msg = message.encode()[:4096]
            payload = struct.pack(">IH", code, len(msg)) + msg
            self.send([struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie,
                                   len(payload)), payload])
        else:
            self.send([struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, code, cookie)])

    def read_reply(self, ex: Export, cookie: int, flags: int, segs: list) -> None:
        if not self.structured or flags & CMD_FLAG_DF:
            bufs: list = []
            for _, n, data in segs:
                bufs.extend(_zeros(n) if data is None else [data])
            if not self.structured:
                self.send([struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie), *bufs])
                return
            size = sum(n for _, n, _ in segs)
            self.send([struct.pack(">IHHQIQ", STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA,
                                   cookie, 8 + size, segs[0][0] - ex.base if segs else 0), *bufs])
            return
        # Structured: runs of data as OFFSET_DATA chunks, long zero runs as OFFSET_HOLE chunks.
        groups: list[tuple[int, int, list | None]] = []  # (offset, length, bufs or None=hole)
        for off, n, data in segs:
            if data is None and n >= MIN_HOLE:
                groups.append((off, n, None))
                continue
            bufs = _zeros(n) if data is None else [data]
            if groups and groups[-1][2] is not None:
                o, m, b = groups[-1]
                groups[-1] = (o, m + n, b + bufs)
            else:
                groups.append((off, n, bufs))
        if not groups:
            self.done(cookie)
            return
        out: list = []
        for i, (off, n, bufs) in enumerate(groups):
            fl = REPLY_FLAG_DONE if i == len(groups) - 1 else 0
            rel = off - ex.base
            if bufs is None:
                out.append(struct.pack(">IHHQIQI", STRUCTURED_REPLY_MAGIC, fl, REPLY_TYPE_OFFSET_HOLE, cookie, 12, rel, n))
            else:
                out.append(struct.pack(">IHHQIQ", STRUCTURED_REPLY_MAGIC, fl, REPLY_TYPE_OFFSET_DATA, cookie, 8 + n, rel))
                out.extend(bufs)
        self.send(out)

    def block_status(self, ex: Export, cookie: int, flags: int, offset: int, length: int) -> None:
        if not self.meta:
            self.error(cookie, errno.EINVAL, "no meta context negotiated (base:allocation)")
            return
        if length == 0:
            self.error(cookie, errno.EINVAL, "zero-length block status request")
            return
        try:
            extents = ex.reader.extents(ex.base + offset, ex.base + offset + length)
        except (DiskvaultError, OSError) as exc:
            self.error(cookie, errno.EIO, str(exc)[:512])
            return
        limit = 1 if flags & CMD_FLAG_REQ_ONE else MAX_EXTENTS
        desc = b"".join(struct.pack(">II", n, STATE_HOLE | STATE_ZERO if zero else 0) for _, n, zero in extents[:limit])
        payload = struct.pack(">I", ALLOCATION_ID) + desc
        self.send([struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie,
                               len(payload)), payload])


