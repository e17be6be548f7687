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
import os
import socket
import ssl
import stat
import sys
import threading
import time
from collections.abc import Callable

from ...errors import SourceError, TargetError, UsageError
from ...images.partitions import read_table
from ...repository import Repository
from .snapshot_reader import ReadContext, SnapshotReader
from .nbd_connection import _Connection
from .nbd_protocol import (
    ACCEPT_BACKOFF, DEFAULT_MAX_CONNECTIONS, DEFAULT_PORT, DEFAULT_TIMEOUT, Export, FDS_PER_CONNECTION,
    FDS_RESERVED, READAHEAD, REPORT_EVERY, SNDBUF, TICK, _Closed, is_loopback, parse_bind, raise_fd_limit,
    tls_context,
)

__all__ = ["NbdServer", "Export", "parse_bind", "tls_context", "is_loopback"]


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
