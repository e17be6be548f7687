"""A read-only NBD server: every snapshot of a repository is an export.

Protocol (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md): fixed newstyle
handshake; options NBD_OPT_GO, INFO, LIST, EXPORT_NAME, ABORT, STRUCTURED_REPLY,
LIST_META_CONTEXT and SET_META_CONTEXT (the one context is ``base:allocation``), and
STARTTLS when the server has a TLS context (anything else is answered NBD_REP_ERR_UNSUP);
commands READ, DISC, CACHE, BLOCK_STATUS and FLUSH (a no-op); WRITE, TRIM and WRITE_ZEROES
are refused with EPERM (exports are flagged read-only). With structured replies, zero extents of a read are sent
as holes and block status reports them as ``NBD_STATE_HOLE|NBD_STATE_ZERO``.

Export names: a snapshot id, a unique id prefix, ``latest`` or ``latest:TAG`` (the empty
name means ``latest``); ``NAME/pN`` is partition N of that snapshot. Names are resolved
when a client asks, so snapshots taken while serving are exported too.

Speed (measured with ``benchmarks/nbd_throughput.py``; see docs/access.md): one thread per
client connection reads requests through a buffered reader (a client with many requests in
flight sends many headers per recv) and serves them in order, inline: find the chunks,
read and verify them, ``sendmsg`` the header and the chunk views in one call. All
connections share one ReadContext (the bounded chunk cache). A connection is a Stream: once
its reads are sequential, each fetch also reads and verifies the next READAHEAD bytes in
the same pack reads (``ReadContext.readahead``), so a 256 KiB request mostly finds its
chunks cached. No worker pool, no background prefetch: on CPython the work is bound by the
GIL between short C calls, and every extra runnable thread turned into futex hand-offs (a
per-connection pool, a shared pool or the old prefetch threads cost 20-50% more CPU for the
same bytes); clients that want parallelism open several connections (``nbdcopy`` opens one
per core, exports advertise multi-conn). ``--bind unix:PATH`` serves on a Unix socket. Chunks are never served from a pack mapping (mmap would save
the pread copy, but a verified chunk must stay the bytes served, and a pack read error would
be SIGBUS rather than EIO).

A failing read (damaged chunk) is answered EIO and logged on stderr; the connection stays
up. ``serve`` binds loopback by default, reports a busy port as TargetError, and stops on
KeyboardInterrupt by closing the listening socket and every connection.

Exposure (docs/access.md, "Who can read what"): a TCP address that is not loopback is refused
(UsageError) unless the server has a TLS context or ``insecure``; a Unix socket is made 0600
before it listens. With TLS the server runs the protocol's FORCEDTLS mode: every option but
STARTTLS and ABORT is answered NBD_REP_ERR_TLS_REQD (EXPORT_NAME, which cannot be answered
with an error, closes the connection) until the TLS handshake is done; ``ssl`` cannot
``sendmsg``, so TLS replies are joined into writes of up to 1 MiB.

Floods: at most ``max_connections`` connections are served at once; one over the limit is
accepted and closed at once, so the others are not affected. A connection must choose its
export within ``timeout`` seconds of being accepted (TLS handshake included): the accept
loop, which wakes at least every 0.5 s, shuts down the late ones, and every socket operation
of the handshake times out after ``timeout`` too. Connections in transmission never time
out (a kernel client may idle for hours). The open-file soft limit is raised to the hard
limit at start; an accept that fails (EMFILE, ENFILE, ENOBUFS, ECONNABORTED, ...) is
counted, reported and retried after 0.1 s: the server never exits because accept failed.
Refusals, timeouts and failed accepts are logged as one summary line at most every 5 s.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import resource
import socket
import ssl
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...repository.catalog import SnapshotRecord
from ...errors import DiskvaultError, SourceError, TargetError, UsageError
from ...images.partitions import read_table
from ...repository import Repository
from .snapshot_reader import ZEROS, ReadContext, SnapshotReader, Stream

DEFAULT_PORT = 10809
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
C_FIXED_NEWSTYLE, C_NO_ZEROES = 1, 2

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH = 1 << 0, 1 << 1, 1 << 2
TF_SEND_DF, TF_CAN_MULTI_CONN, TF_SEND_CACHE = 1 << 7, 1 << 8, 1 << 10

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
CMD_FLAG_DF, CMD_FLAG_REQ_ONE = 1 << 2, 1 << 3

REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE = 0, 1, 2
REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR = 5, (1 << 15) + 1
STATE_HOLE, STATE_ZERO = 1, 2

ALLOCATION = "base:allocation"
ALLOCATION_ID = 1
MAX_OPTION = 64 << 10
MAX_REQUEST = 32 << 20  # largest read served (advertised as the maximum block size)
PREFERRED_BLOCK = 64 << 10
MAX_EXTENTS = 4096  # block status descriptors per reply
MIN_HOLE = 4096  # zero runs in a read shorter than this are sent as data
IOV_BATCH = 512
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, command, cookie, offset, length
READAHEAD = 2 << 20  # a sequential reader's chunks are fetched (and verified) this far ahead
SNDBUF = 4 << 20  # socket send buffer: a few replies queued while the client reads
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_TIMEOUT = 30  # seconds from accept to the chosen export
TICK = 0.5  # the accept loop wakes this often to close late handshakes
REPORT_EVERY = 5.0  # seconds between two summary lines about refused/late/failed connections
ACCEPT_BACKOFF = 0.1  # seconds to wait after a failed accept (EMFILE ...) before trying again
FDS_PER_CONNECTION = 4  # the socket and the thread's SQLite read connection (db, -wal, -shm)
FDS_RESERVED = 128  # the repository: catalog, lock, cached pack descriptors (64), the listener
TLS_WRITE = 1 << 20  # TLS replies are joined into writes of at most this many bytes
TLS_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")  # as nbdkit --tls-certificates, qemu tls-creds-x509


class _Closed(Exception):
    """The peer went away or broke the protocol: drop the connection."""


@dataclass
class Export:
    name: str  # as asked
    snap: SnapshotRecord
    reader: SnapshotReader
    base: int  # offset of the export in the image (partitions)
    size: int
    description: str


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``:PORT``, ``PORT`` or ``[IPv6]:PORT`` -> (host, port);
    ``unix:PATH`` (a Unix socket, as ``nbdkit -U``/``qemu-nbd -k``) -> ("unix:PATH", 0)."""
    text = text.strip()
    if text.startswith("unix:"):
        if len(text) == 5:
            raise UsageError("--bind unix:PATH needs the path of the socket to create, e.g. unix:/run/diskvault.sock")
        return text, 0
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.isdigit():
        host, port = "127.0.0.1", text
    elif text.count(":") == 1:
        host, port = text.split(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--bind {text!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def tls_context(folder: str, verify_peer: bool = False) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) from a certificates folder laid out as
    nbdkit's ``--tls-certificates`` and qemu's ``tls-creds-x509``: ``server-cert.pem``,
    ``server-key.pem`` and, needed with ``verify_peer`` (clients must then present a
    certificate signed by it), ``ca-cert.pem``. Raises SourceError (exit 5) naming the missing
    or unusable file."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise SourceError(f"--tls-certificates {folder}: no such directory: give the folder holding {', '.join(TLS_FILES)}")
    need = TLS_FILES if verify_peer else TLS_FILES[1:]
    missing = [f for f in need if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise SourceError(f"--tls-certificates {folder}: missing {', '.join(missing)}: "
                          f"create them (docs/access.md shows how with openssl)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.path.join(folder, "server-cert.pem"), os.path.join(folder, "server-key.pem"))
        if verify_peer:
            ctx.load_verify_locations(os.path.join(folder, "ca-cert.pem"))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise SourceError(f"--tls-certificates {folder}: cannot load the certificates ({reason}): "
                          f"check that server-key.pem is the key of server-cert.pem, all in PEM") from None
    return ctx


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns the soft limit now
    in force (unchanged if raising it failed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (a numeric address, as bound)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class NbdServer:
    """Serves a repository's snapshots; ``serve_forever`` until KeyboardInterrupt or ``stop``.

    ``max_connections`` (>= 1) connections at once, each choosing its export within
    ``timeout`` seconds; ``tls`` (see ``tls_context``) makes TLS mandatory. A TCP address that
    is not loopback needs ``tls`` or ``insecure`` (else UsageError, exit 2). Raises
    TargetError/SourceError for an address that cannot be bound."""

    def __init__(self, repo: Repository, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 log: Callable[[str], None] | None = None, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 timeout: float = DEFAULT_TIMEOUT, tls: ssl.SSLContext | None = None, insecure: bool = False) -> None:
        self.repo = repo
        self.log = log or (lambda msg: print(f"diskvault serve: {msg}", file=sys.stderr, flush=True))
        self.max_connections = max_connections
        self.timeout = timeout
        self.tls = tls
        self.fd_limit = raise_fd_limit()
        if self.fd_limit < max_connections * FDS_PER_CONNECTION + FDS_RESERVED:
            self.log(f"the open-file limit ({self.fd_limit}) is low for {max_connections} connections: some may be "
                     f"refused; raise it (ulimit -Hn) or lower --max-connections")
        self._readers: dict[str, SnapshotReader] = {}
        self._tables: dict[str, object] = {}
        self._lock = threading.Lock()
        self._conns: set[_Connection] = set()
        self._stopping = threading.Event()
        self._next_tick = self._next_report = 0.0
        self._refused = self._late = self._failed = 0
        self._accept_error = ""
        self.socket_path: str | None = None
        self._socket_file: str | None = None
        if host.startswith("unix:"):
            self._bind_unix(host[5:])
        else:
            self._bind_tcp(host, port, insecure)
        self.ctx = ReadContext(repo, prefetch=False, readahead=READAHEAD)

    def _bind_tcp(self, host: str, port: int, insecure: bool) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise SourceError(f"cannot bind to {host}:{port}: {exc.strerror}") from None
        if self.tls is None and not insecure and not is_loopback(infos[0][4][0]):
            raise UsageError(f"--bind {host}:{port} is not a loopback address, so anyone who reaches it could read "
                             f"every snapshot: add --tls --tls-certificates DIR, or --insecure to serve it in clear")
        self.sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(infos[0][4])
        except OSError as exc:
            self.sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise TargetError(
                    f"address {host}:{port} is already in use (another NBD server?): stop it or choose --bind HOST:PORT"
                ) from None
            if exc.errno == errno.EACCES:
                raise TargetError(f"permission denied binding {host}:{port}: use a port above 1023 or run as root") from None
            raise TargetError(f"cannot bind to {host}:{port}: {exc.strerror}") from None
        self.sock.listen(socket.SOMAXCONN)
        self.host, self.port = self.sock.getsockname()[:2]

    def _bind_unix(self, path: str) -> None:
        path = os.path.abspath(path)
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise TargetError(f"{path} exists and is not a socket: choose another --bind unix:PATH")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:  # nobody listens: a stale socket of a server that was killed
                os.unlink(path)
            else:
                raise TargetError(f"socket {path} is already in use (another NBD server?): stop it or choose another path")
            finally:
                probe.close()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)
            # Owner only, before listen: nobody can connect to a socket that does not listen yet.
            os.chmod(path, 0o600)
        except OSError as exc:
            self.sock.close()
            raise TargetError(f"cannot create socket {path}: {exc.strerror}") from None
        self.sock.listen(socket.SOMAXCONN)
        self.socket_path = self._socket_file = path
        self.host, self.port = path, None

    @property
    def url(self) -> str:
        scheme = "nbds" if self.tls is not None else "nbd"
        if self.socket_path is not None:
            return f"{scheme}+unix:///?socket={self.socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    # --- exports ------------------------------------------------------------------------
    def export(self, name: str) -> Export:
        """Resolve an export name; raises DiskvaultError (SnapshotError, PartitionError)."""
        snap_name, _, part = name.partition("/")
        snap = self.ctx.resolve(snap_name or "latest")
        with self._lock:
            reader = self._readers.get(snap.id)
            if reader is None:
                reader = self._readers[snap.id] = SnapshotReader(self.ctx, snap)
        if not part:
            return Export(name, snap, reader, 0, snap.size, f"diskvault snapshot {snap.id} of {snap.source} ({snap.time})")
        if not (part.startswith("p") and part[1:].isdigit()):
            raise SourceError(f"export {name!r}: a partition is named pN, e.g. {snap_name or 'latest'}/p1")
        table = read_table(reader.read, reader.size)
        p = table.get(int(part[1:]))
        size = max(0, min(p.length, reader.size - p.offset))
        return Export(name, snap, reader, p.offset, size, f"partition {p.number} ({p.type}) of diskvault snapshot {snap.id}")

    def export_names(self) -> list[str]:
        snaps = self.ctx.snapshots()
        return (["latest"] if snaps else []) + [s.id for s in snaps]

    # --- life cycle -------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept clients until ``stop`` (or KeyboardInterrupt), holding the repository's
        shared lock all along: prune cannot remove packs while they are served."""
        self.sock.settimeout(TICK)
        try:
            with self.repo.lock("shared", "serve"):
                self._accept_loop()
        finally:
            self.stop()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            self._tick()
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ECONNABORTED ...: never fatal
                if self._stopping.is_set():
                    break
                with self._lock:
                    self._failed += 1
                self._accept_error = exc.strerror or str(exc)
                self._stopping.wait(ACCEPT_BACKOFF)
                continue
            self._start(conn, peer if self.socket_path is None else ("unix", 0))

    def _start(self, conn: socket.socket, peer) -> None:
        with self._lock:
            full = len(self._conns) >= self.max_connections
            self._refused += full
        if full:  # refused at once: the connections being served are not affected
            conn.close()
            return
        try:
            if self.socket_path is None:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if SNDBUF:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            conn.settimeout(self.timeout)  # each handshake read/write; the whole handshake: _tick
            c = _Connection(self, conn, peer, time.monotonic() + self.timeout)
        except OSError:  # reset before we got to it
            conn.close()
            return
        with self._lock:
            self._conns.add(c)
        try:
            threading.Thread(target=self._client, args=(c,), daemon=True, name=f"nbd-{peer[0]}:{peer[1]}").start()
        except RuntimeError:  # can't start new thread: as refused
            with self._lock:
                self._conns.discard(c)
                self._refused += 1
            c.close()

    def _tick(self) -> None:
        """Every TICK: close handshakes past their deadline; every REPORT_EVERY at most, one
        line about connections refused, timed out or not accepted since the last one."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK
        with self._lock:
            late = [c for c in self._conns if c.deadline is not None and c.deadline <= now]
            for c in late:
                c.deadline, c.timed_out = None, True
        for c in late:
            c.abort()  # counted when its thread ends
        if now >= self._next_report:
            self._report(now)

    def _report(self, now: float) -> None:
        with self._lock:
            refused, late, failed = self._refused, self._late, self._failed
            self._refused = self._late = self._failed = 0
        if not (refused or late or failed):
            return
        self._next_report = now + REPORT_EVERY
        parts = []
        if refused:
            parts.append(f"refused {refused} connection(s) over the limit of {self.max_connections} (--max-connections)")
        if late:
            parts.append(f"closed {late} connection(s) that chose no export within {self.timeout:g} s (--timeout)")
        if failed:
            parts.append(f"could not accept {failed} connection(s): {self._accept_error} "
                         f"(open-file limit {self.fd_limit}: lower --max-connections or raise ulimit -Hn)")
        self.log("; ".join(parts))

    def stop(self) -> None:
        self._stopping.set()
        self._report(time.monotonic())  # what happened since the last summary line
        try:
            self.sock.close()
        except OSError:
            pass
        if self._socket_file is not None:  # ours: remove it (once)
            path, self._socket_file = self._socket_file, None
            try:
                os.unlink(path)
            except OSError:
                pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.abort()
        self.ctx.close()

    def _client(self, c: _Connection) -> None:
        try:
            c.run()
        except TimeoutError:  # only handshake reads and writes have a timeout
            c.timed_out = True
        except (_Closed, ConnectionError, OSError):
            pass
        except Exception as exc:  # a bug: keep serving the other clients
            self.log(f"connection from {c.peer[0]} ended by an internal error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._conns.discard(c)
                self._late += c.timed_out
            c.close()


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


def _zeros(n: int) -> list:
    out = []
    while n > 0:
        k = min(n, len(ZEROS))
        out.append(ZEROS[:k])
        n -= k
    return out
