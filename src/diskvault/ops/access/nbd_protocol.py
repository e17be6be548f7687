"""NBD protocol constants and the small pieces the server and its connections share: the
export record, ``--bind`` parsing, the TLS context from a certificates folder, the open-file
limit and loopback test (see nbd_server.py for the protocol and its choices;
https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md)."""

from __future__ import annotations

import ipaddress
import os
import resource
import ssl
import struct
from dataclasses import dataclass

from ...errors import SourceError, UsageError
from ...repository.catalog import SnapshotRecord
from .snapshot_reader import SnapshotReader, ZEROS

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


def _zeros(n: int) -> list:
    out = []
    while n > 0:
        k = min(n, len(ZEROS))
        out.append(ZEROS[:k])
        n -= k
    return out
