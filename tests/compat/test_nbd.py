"""`diskvault serve` with real NBD clients: qemu-img, nbdcopy, nbdinfo, qemu-io."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from access_fixtures import nbd_server

from helpers import cli_env, random_bytes, run_cli, tool

MiB = 1 << 20


@pytest.fixture
def served(tmp_path, repo_path):
    """An image with data, zero runs and a tail; snapshotted twice (second is `latest`)."""
    img = tmp_path / "disk.img"
    img.write_bytes(random_bytes(3 * MiB, 1) + bytes(4 * MiB) + random_bytes(2 * MiB + 123, 2) + bytes(MiB))
    old = tmp_path / "old.img"
    old.write_bytes(random_bytes(2 * MiB, 9))
    run_cli("snapshot", "-r", repo_path, old, "--tag", "old")
    run_cli("snapshot", "-r", repo_path, img, "--tag", "new")
    with nbd_server(repo_path) as (proc, port):
        yield img, old, port, proc


def test_qemu_img_compare_identical(served):
    img, _, port, _ = served
    out = subprocess.run([tool("qemu-img"), "compare", "-f", "raw", "-F", "raw", str(img),
                          f"nbd://127.0.0.1:{port}/latest"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Images are identical" in out.stdout


def test_nbdcopy_equals_source_for_every_name(served, tmp_path, repo_path):
    img, old, port, _ = served
    snaps = json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)
    ids = {s["tags"][0]: s["id"] for s in snaps}
    cases = [("latest", img), ("latest:old", old), (ids["new"], img), (ids["old"][:8], old)]

    def copy(case):
        name, src = case
        out = tmp_path / f"copy-{name.replace(':', '_')}.img"
        subprocess.run([tool("nbdcopy"), f"nbd://127.0.0.1:{port}/{name}", str(out)], check=True, capture_output=True)
        return out.read_bytes() == src.read_bytes()

    with ThreadPoolExecutor(4) as pool:  # several clients at once
        assert all(pool.map(copy, cases))


def test_nbdinfo_map_shows_zero_extents_as_holes(served):
    _, _, port, _ = served
    out = subprocess.run([tool("nbdinfo"), "--map", "--json", f"nbd://127.0.0.1:{port}/latest"],
                         capture_output=True, text=True, check=True)
    extents = json.loads(out.stdout)
    holes = [(e["offset"], e["length"]) for e in extents if e["type"] == 3]
    data = [(e["offset"], e["length"]) for e in extents if e["type"] == 0]
    assert sum(e["length"] for e in extents) == 10 * MiB + 123
    # 16 KiB chunks: the zero runs are found to within a chunk of their edges
    assert any(3 * MiB <= o and o + n <= 7 * MiB and n >= 4 * MiB - (128 << 10) for o, n in holes)
    assert any(o + n == 10 * MiB + 123 and n >= MiB - (128 << 10) for o, n in holes)
    assert data and data[0][0] == 0


def test_list_info_and_description(served, repo_path):
    _, _, port, _ = served
    out = subprocess.run([tool("nbdinfo"), "--list", "--json", f"nbd://127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    names = [e["export-name"] for e in info["exports"]]  # the canonical name: the snapshot id
    snaps = json.loads(run_cli("snapshots", "-r", repo_path, "--json").stdout)
    assert sorted(names) == sorted([snaps[-1]["id"]] + [s["id"] for s in snaps])
    e = info["exports"][0]
    assert e["is_read_only"] is True and e["can_multi_conn"] is True
    assert "base:allocation" in e["contexts"]


def _recvall(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        assert part, "server hung up"
        buf += part
    return bytes(buf)


def _raw_client(port: int, name: bytes) -> socket.socket:
    """Fixed newstyle handshake + NBD_OPT_GO by hand; returns the socket in transmission."""
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    hello = _recvall(c, 18)
    assert hello[:16] == b"NBDMAGICIHAVEOPT"
    c.sendall(struct.pack(">I", 3))
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    c.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
    while True:
        _, _, kind, n = struct.unpack(">QIII", _recvall(c, 20))
        payload = _recvall(c, n) if n else b""
        if kind == 1:
            return c
        assert kind == 3, hex(kind)
        info_type, size, flags = struct.unpack(">HQH", payload)
        assert info_type == 0 and flags & 2  # NBD_FLAG_READ_ONLY


def test_writes_are_refused_with_eperm(served):
    img, _, port, _ = served
    c = _raw_client(port, b"latest")
    c.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 77, 0, 4096) + bytes(4096))  # NBD_CMD_WRITE
    magic, err, cookie = struct.unpack(">IIQ", _recvall(c, 16))
    assert (magic, err, cookie) == (0x67446698, 1, 77)  # simple reply, EPERM
    c.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 78, 3 * MiB - 10, 20))  # the connection still reads
    magic, err, cookie = struct.unpack(">IIQ", _recvall(c, 16))
    assert (err, cookie) == (0, 78)
    assert _recvall(c, 20) == img.read_bytes()[3 * MiB - 10 : 3 * MiB + 10]
    c.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 79, 0, 0))  # NBD_CMD_DISC
    c.close()
    # qemu opens the export read-only-aware: a write is refused on the client side too
    out = subprocess.run([tool("qemu-io"), "-f", "raw", "-c", "write -P 0x55 0 4096", f"nbd://127.0.0.1:{port}/latest"],
                         capture_output=True, text=True)
    assert out.returncode != 0 or "Operation not permitted" in out.stdout + out.stderr
    out = subprocess.run([tool("qemu-io"), "-r", "-f", "raw", "-c", "read -P 0 4M 64k", f"nbd://127.0.0.1:{port}/latest"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "read 65536/65536" in out.stdout, out.stdout + out.stderr


def test_unknown_export_name(served):
    _, _, port, proc = served
    out = subprocess.run([tool("nbdinfo"), f"nbd://127.0.0.1:{port}/nosuch"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "nosuch" in out.stderr
    out = subprocess.run([tool("nbdinfo"), f"nbd://127.0.0.1:{port}/abcdef0123"], capture_output=True, text=True)
    assert out.returncode != 0 and "export: abcdef0123" in out.stderr
    assert proc.poll() is None  # the server keeps serving


def test_port_in_use_is_one_clear_line(repo_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        out = run_cli("serve", "-r", repo_path, "--bind", f"127.0.0.1:{port}", check=False, timeout=30)
    finally:
        s.close()
    assert out.returncode == 5
    err = out.stderr.decode()
    assert err.count("\n") == 1 and "already in use" in err and "--bind" in err


def test_ctrl_c_stops_cleanly(repo_path):
    proc = subprocess.Popen([sys.executable, "-m", "diskvault", "serve", "-r", str(repo_path), "--bind", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        assert b"nbd://127.0.0.1:" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_partition_export(tmp_path, repo_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from gpt_image import make_gpt_disk

    disk, _, offset, length = make_gpt_disk(tmp_path)
    run_cli("snapshot", "-r", repo_path, disk)
    with nbd_server(repo_path) as (_, port):
        out = tmp_path / "p2.img"
        subprocess.run([tool("nbdcopy"), f"nbd://127.0.0.1:{port}/latest/p2", str(out)], check=True, capture_output=True)
        with open(disk, "rb") as f:
            f.seek(offset)
            assert out.read_bytes() == f.read(length)
        bad = subprocess.run([tool("nbdinfo"), f"nbd://127.0.0.1:{port}/latest/p9"], capture_output=True, text=True)
        assert bad.returncode != 0


def test_unix_socket_bind(tmp_path, repo_path):
    """--bind unix:PATH (as nbdkit -U / qemu-nbd -k): real clients read through the socket; a
    second server on it is refused (exit 5); the socket file is removed at the end."""
    img = tmp_path / "u.img"
    img.write_bytes(random_bytes(2 * MiB, 4) + bytes(MiB) + random_bytes(MiB, 5))
    run_cli("snapshot", "-r", repo_path, img)
    path = tmp_path / "nbd.sock"
    proc = subprocess.Popen([sys.executable, "-m", "diskvault", "serve", "-r", str(repo_path), "--bind", f"unix:{path}",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        info = json.loads(proc.stdout.readline())
        assert info["socket"] == str(path) and info["port"] is None
        assert info["url"] == f"nbd+unix:///?socket={path}"
        out = subprocess.run([tool("nbdinfo"), f"nbd+unix:///latest?socket={path}"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert f"export-size: {img.stat().st_size}" in out.stdout
        copy = tmp_path / "copy.img"
        subprocess.run([tool("nbdcopy"), f"nbd+unix:///latest?socket={path}", str(copy)], check=True, capture_output=True)
        assert copy.read_bytes() == img.read_bytes()
        busy = run_cli("serve", "-r", repo_path, "--bind", f"unix:{path}", check=False)
        assert busy.returncode == 5 and "already in use" in busy.stderr.decode()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    assert not path.exists()
    (tmp_path / "file").write_text("x")
    not_socket = run_cli("serve", "-r", repo_path, "--bind", f"unix:{tmp_path / 'file'}", check=False)
    assert not_socket.returncode == 5 and "not a socket" in not_socket.stderr.decode()
