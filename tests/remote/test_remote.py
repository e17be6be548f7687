"""Remote repositories (``-r s3:…``) against a real SeaweedFS: the commands, the catalog as a
local cache (a fresh machine, request counts of a sync), locks in the store, a client killed
mid-snapshot, and the one-line errors of wrong credentials and a missing bucket."""

from __future__ import annotations

import collections
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import random_bytes, run_cli, secret

from diskvault.repository import Repository, locking
from diskvault.repository import repository as repository_module


def snapshot(url: str, image: Path, env: dict, *more: str) -> str:
    return json.loads(run_cli("snapshot", "-r", url, image, "--json", *more, env=env).stdout)["id"]


def restored(url: str, sid: str, out: Path, env: dict) -> bytes:
    run_cli("restore", "-r", url, sid, out, env=env)
    data = out.read_bytes()
    out.unlink()
    return data


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode().strip()
    assert err and "\n" not in err, err
    return err


def test_snapshot_incremental_restore_bit_identical_and_fresh_machine(remote, tmp_path):
    url, env = remote
    img = tmp_path / "disk.img"
    first = random_bytes(6 << 20, 1)
    img.write_bytes(first)
    run_cli("init", "-r", url, env=env)
    s1 = snapshot(url, img, env)
    second = bytearray(first)
    second[1 << 20 : 2 << 20] = random_bytes(1 << 20, 2)
    img.write_bytes(second)
    rec2 = json.loads(run_cli("snapshot", "-r", url, img, "--json", env=env).stdout)
    assert rec2["new_bytes"] < 2 << 20  # deduplicated against the first, through the cache
    assert restored(url, s1, tmp_path / "out", env) == first
    assert restored(url, rec2["id"], tmp_path / "out", env) == second
    run_cli("verify", "-r", url, "latest", img, env=env)
    run_cli("check", "-r", url, "--read-data", env=env)
    # another machine: an empty cache directory
    env2 = dict(env, DISKVAULT_CACHE_DIR=str(tmp_path / "cache2"))
    listed = json.loads(run_cli("snapshots", "-r", url, "--json", env=env2).stdout)
    assert [s["id"] for s in listed] == [s1, rec2["id"]]
    assert restored(url, "latest", tmp_path / "out", env2) == second
    assert (tmp_path / "cache2").is_dir() and not (tmp_path / "cache2" / "catalog.sqlite").exists()


def test_forget_prune_key_info_repair_on_s3(remote, tmp_path):
    url, env = remote
    img = tmp_path / "disk.img"
    run_cli("init", "-r", url, env=env)
    datas = []
    for seed in range(3):
        datas.append(random_bytes(2 << 20, 10 + seed))
        img.write_bytes(datas[-1])
        snapshot(url, img, env)
    run_cli("forget", "-r", url, "--keep-last", "1", env=env)
    run_cli("prune", "-r", url, env=env)
    info = json.loads(run_cli("info", "-r", url, "--json", env=env).stdout)
    assert info["repository"] == url
    # another machine that synced before the prune sees it after: pruned packs are forgotten
    env2 = dict(env, DISKVAULT_CACHE_DIR=str(tmp_path / "cache2"))
    assert restored(url, "latest", tmp_path / "out", env2) == datas[-1]
    run_cli("check", "-r", url, "--read-data", env=env2)
    (tmp_path / "pw2").write_text("another passphrase\n")
    run_cli("key", "add", "-r", url, "--new-password-file", tmp_path / "pw2", env=env)
    keys = json.loads(run_cli("key", "list", "-r", url, "--json", env=env).stdout)
    assert len(keys) == 2
    run_cli("snapshots", "-r", url, env=dict(env2, DISKVAULT_PASSWORD="another passphrase"))
    # a damaged cache: repair rebuilds it from the store
    cache_files = list((tmp_path / "cache").glob("*/catalog.sqlite"))
    assert len(cache_files) == 1
    cache_files[0].write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(cache_files[0]) + suffix).unlink(missing_ok=True)
    broken = run_cli("snapshots", "-r", url, env=env, check=False)
    assert broken.returncode == 3, broken.stderr
    assert "repair" in one_line_error(broken)
    res = json.loads(run_cli("repair", "-r", url, "--json", env=env).stdout)
    assert res["snapshots"] == 1 and res["status_after"] == "sound"
    assert restored(url, "latest", tmp_path / "out", env) == datas[-1]


class Counting:
    """The real storage, counting the requests made through it (a LIST of under 1,000 names
    is one request)."""

    REQUESTS = ("read", "read_range", "size", "exists", "list", "put", "replace", "write_atomic", "delete")

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: collections.Counter[str] = collections.Counter()

    def total(self) -> int:
        return sum(self.calls.values())

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if name not in self.REQUESTS:
            return attr

        def counted(*args, **kw):
            self.calls[name] += 1
            return attr(*args, **kw)
        return counted


def _open_counting(url: str, monkeypatch) -> tuple[Repository, Counting]:
    made = []
    real = repository_module.remote_storage

    def counting(location):
        made.append(Counting(real(location)))
        return made[-1]
    monkeypatch.setattr(repository_module, "remote_storage", counting)
    repo = Repository.open(url, write=False, passphrase=secret)
    return repo, made[0]


def test_fresh_cache_sync_costs_requests_per_object_added_not_per_chunk(remote, tmp_path, monkeypatch):
    url, env = remote
    img = tmp_path / "disk.img"
    run_cli("init", "-r", url, "--chunk-size", "16K", env=env)
    n = 8
    for seed in range(n):
        img.write_bytes(random_bytes(1 << 20, 100 + seed))
        snapshot(url, img, env)
    # open overhead: config.json, the key list and one key (unlock), the LISTs of records and packs
    fixed = 5
    monkeypatch.setenv("DISKVAULT_CACHE_DIR", str(tmp_path / "fresh"))
    repo, store = _open_counting(url, monkeypatch)
    with repo:
        totals = repo.catalog.blob_totals()
        assert len(repo.snapshots()) == n
    packs, chunks = totals["packs"], totals["chunks"]
    assert chunks >= 40 * n  # many chunks per snapshot ...
    # ... but the sync costs a HEAD and three ranged GETs per pack and a GET per record
    assert store.total() == fixed + 4 * packs + n, store.calls
    assert store.total() < chunks / 4
    # two more snapshots from another machine: the next sync here costs only what they added
    for seed in range(2):
        img.write_bytes(random_bytes(1 << 20, 200 + seed))
        snapshot(url, img, env)
    repo, store = _open_counting(url, monkeypatch)
    with repo:
        added = repo.catalog.blob_totals()["packs"] - packs
        assert len(repo.snapshots()) == n + 2
    assert 1 <= added <= 4
    assert store.total() == fixed + 4 * added + 2, store.calls
    # nothing new: the LISTs only
    repo, store = _open_counting(url, monkeypatch)
    repo.close()
    assert store.total() == fixed, store.calls


def test_snapshot_killed_leaves_a_repository_whose_next_snapshot_succeeds(remote, tmp_path):
    url, env = remote
    run_cli("init", "-r", url, env=env)
    img = tmp_path / "disk.img"
    first = random_bytes(3 << 20, 7)
    img.write_bytes(first)
    s1 = snapshot(url, img, env)
    big = random_bytes(48 << 20, 8)
    img.write_bytes(big)
    store = repository_module.remote_storage(url)
    packs_before = sum(1 for _ in store.list("packs"))
    kill_env = dict(env, DISKVAULT_PACK_SIZE=str(1 << 20))  # many packs: killed between two of them
    proc = subprocess.Popen([sys.executable, "-m", "diskvault", "snapshot", "-r", url, str(img)],
                            env=kill_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while sum(1 for _ in store.list("packs")) < packs_before + 3 and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert sum(1 for _ in store.list("snapshots")) == 1  # the killed one saved no record
    assert any(True for _ in store.list("locks"))  # and left its lock behind
    s2 = snapshot(url, img, env)  # its lock is of a dead process on this host: removed
    assert not any(True for _ in store.list("locks"))
    run_cli("check", "-r", url, "--read-data", env=env)
    assert restored(url, s1, tmp_path / "out", env) == first
    assert restored(url, s2, tmp_path / "out", env) == big


def test_locks_in_the_store_exclude_across_machines(remote, tmp_path):
    url, env = remote
    run_cli("init", "-r", url, env=env)
    img = tmp_path / "disk.img"
    img.write_bytes(random_bytes(1 << 20, 3))
    other = dict(env, DISKVAULT_CACHE_DIR=str(tmp_path / "other"))
    with Repository.open(url, passphrase=secret) as repo:
        with repo.lock("exclusive", "prune"):
            proc = run_cli("snapshot", "-r", url, img, env=other, check=False)
            assert proc.returncode == 7
            assert "is locked: exclusive lock of 'prune'" in one_line_error(proc)
        with repo.lock("shared", "snapshot"):
            snapshot(url, img, other)  # shared locks coexist
            proc = run_cli("prune", "-r", url, env=other, check=False)
            assert proc.returncode == 7
            assert "is locked: shared lock of 'snapshot'" in one_line_error(proc)
        # a lock of another host: live until not refreshed for REMOTE_STALE_AFTER, then ignored
        now = time.time()
        for age, expect in ((locking.STALE_AFTER + 60, 7), (locking.REMOTE_STALE_AFTER + 60, 0)):
            info = locking.LockInfo("exclusive", "prune", 4242, f"not-{socket.gethostname()}", 0, now - age,
                                    "00000000000000aa.json")
            repo.storage.replace(f"locks/{info.name}", locking._body(info, repo.crypto))
            proc = run_cli("snapshot", "-r", url, img, env=other, check=False)
            assert proc.returncode == expect, proc.stderr
        run_cli("unlock", "-r", url, env=other)
        assert not any(True for _ in repo.storage.list("locks"))


def test_wrong_credentials_and_missing_bucket_are_one_line_errors_exit_3(remote, seaweed):
    url, env = remote
    run_cli("init", "-r", url, env=env)
    wrong = run_cli("snapshots", "-r", url, env=dict(env, AWS_SECRET_ACCESS_KEY="wrong"), check=False)
    assert wrong.returncode == 3
    assert "refused the credentials" in one_line_error(wrong)
    missing = run_cli("snapshots", "-r", seaweed.url("no-such-bucket", "repo"), env=env, check=False)
    assert missing.returncode == 3
    assert "bucket 'no-such-bucket' does not exist" in one_line_error(missing)
    absent = run_cli("snapshots", "-r", url + "-elsewhere", env=env, check=False)
    assert absent.returncode == 3
    assert "is not a diskvault repository" in one_line_error(absent)
    again = run_cli("init", "-r", url, env=env, check=False)
    assert again.returncode == 3
    assert "is already a diskvault repository" in one_line_error(again)


def test_concurrent_takers_never_both_hold_an_exclusive_lock(remote):
    """Look, write, look again (locking.py): four threads taking the exclusive lock of one
    store over and over; never two inside at once, and every one gets its turns."""
    import threading

    url, _ = remote
    store = repository_module.remote_storage(url)
    inside, most, turns, errors = [0], [0], [0], []
    guard = threading.Lock()

    def taker():
        try:
            for _ in range(4):
                held = locking.acquire(url, "exclusive", "prune", wait=120, storage=store)
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.01)
                with guard:
                    inside[0] -= 1
                    turns[0] += 1
                held.release()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=taker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert most[0] == 1 and turns[0] == 16
    assert not any(True for _ in store.list("locks"))


def test_copy_local_first_then_offsite_and_back(remote, tmp_path):
    """Issue 14's 3-2-1 flow: snapshots into a local repository, copied to S3 (only new
    chunks the second time), restored from S3 on a fresh machine; and copied back into a
    second local repository."""
    url, env = remote
    local, back = tmp_path / "local", tmp_path / "back"
    run_cli("init", "-r", local, env=env)
    run_cli("init", "-r", url, env=env)
    img = tmp_path / "disk.img"
    first = random_bytes(4 << 20, 31)
    img.write_bytes(first)
    run_cli("snapshot", "-r", local, img, env=env)
    res = json.loads(run_cli("copy", "-r", local, "--to", url, "--json", env=env).stdout)
    assert len(res["copied"]) == 1 and res["copied"][0]["new_bytes"] >= 4 << 20
    second = bytearray(first)
    second[0 : 256 << 10] = random_bytes(256 << 10, 32)
    img.write_bytes(second)
    run_cli("snapshot", "-r", local, img, env=env)
    res = json.loads(run_cli("copy", "-r", local, "--to", url, "--json", env=env).stdout)
    assert [len(res["copied"]), len(res["skipped"])] == [1, 1]
    assert res["copied"][0]["new_bytes"] < 1 << 20 and res["bytes_read"] < 1 << 20  # the change, not the image
    env2 = dict(env, DISKVAULT_CACHE_DIR=str(tmp_path / "cache2"))
    assert restored(url, "latest", tmp_path / "out", env2) == bytes(second)
    run_cli("init", "-r", back, env=env)
    res = json.loads(run_cli("copy", "-r", url, "--to", back, "--json", env=env2).stdout)
    assert len(res["copied"]) == 2
    assert restored(back, res["copied"][0]["id"], tmp_path / "out", env) == first
    run_cli("check", "-r", url, "--read-data", env=env)


def test_three_clients_snapshot_at_once_while_a_fourth_forgets_and_prunes(remote, tmp_path):
    """Issue 14: three machines (own caches, own hosts) snapshot images sharing half their
    data into one bucket at once while a fourth runs forget --prune (all wait for locks
    rather than fail: DISKVAULT_LOCK_WAIT). Afterwards check --read-data is sound, every kept
    snapshot restores bit-identically, and the shared data is stored once (what concurrent
    clients stored twice, prune drops: it keeps one copy of each blob)."""
    url, env = remote
    run_cli("init", "-r", url, env=env)
    shared = random_bytes(6 << 20, 40)
    images, old = {}, {}
    for i in range(3):
        host = f"client-{i}"
        cenv = dict(env, DISKVAULT_CACHE_DIR=str(tmp_path / f"cache-{i}"), DISKVAULT_LOCK_WAIT="120")
        path = tmp_path / f"disk-{i}.img"
        old[host] = random_bytes(1 << 20, 50 + i)  # an older snapshot per host, for forget
        path.write_bytes(old[host])
        run_cli("snapshot", "-r", url, path, "--host", host, env=cenv)
        images[host] = (path, cenv, shared + random_bytes(2 << 20, 60 + i))
        path.write_bytes(images[host][2])
    procs = [subprocess.Popen([sys.executable, "-m", "diskvault", "snapshot", "-r", url, str(path), "--host", host],
                              env=cenv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for host, (path, cenv, _) in images.items()]
    penv = dict(env, DISKVAULT_CACHE_DIR=str(tmp_path / "cache-prune"), DISKVAULT_LOCK_WAIT="120")
    time.sleep(0.3)
    pruner = subprocess.Popen([sys.executable, "-m", "diskvault", "forget", "-r", url, "--keep-last", "1", "--prune",
                               "--max-unused", "0"], env=penv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for p in procs + [pruner]:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    run_cli("prune", "-r", url, "--max-unused", "0", env=penv)  # if forget ran first, what it left
    check = json.loads(run_cli("check", "-r", url, "--read-data", "--json", env=penv).stdout)
    assert check["status"] == "sound", check["errors"]
    kept = json.loads(run_cli("snapshots", "-r", url, "--json", env=penv).stdout)
    hosts = collections.Counter(s["host"] for s in kept)
    assert set(hosts) == set(images) and all(n in (1, 2) for n in hosts.values())
    for s in kept:
        want = images[s["host"]][2] if s["size"] == len(images[s["host"]][2]) else old[s["host"]]
        assert restored(url, s["id"], tmp_path / "out", penv) == want
    store = repository_module.remote_storage(url)
    packed = sum(store.size(n) for n in store.list("packs"))
    # incompressible data: 6 MiB shared + 3 x 2 MiB own (+ the old 1 MiB ones if forget ran first)
    assert packed <= (6 + 3 * 2 + 3 * 1) * (1 << 20) * 1.05, packed


def _kill_env(env: dict) -> dict:
    return dict(env, DISKVAULT_PACK_SIZE=str(1 << 20))  # many packs: killed between and inside them


def test_client_killed_at_20_random_points_of_a_snapshot(remote, tmp_path):
    """SIGKILL of a client at 20 random moments of a snapshot to S3: after each, check is
    sound and the earlier snapshots are intact; at the end check --read-data is sound, they
    restore bit-identically and the next snapshot succeeds."""
    import random

    url, env = remote
    run_cli("init", "-r", url, env=env)
    img = tmp_path / "disk.img"
    first = random_bytes(2 << 20, 70)
    img.write_bytes(first)
    s1 = snapshot(url, img, env)
    big = random_bytes(12 << 20, 71)
    img.write_bytes(big)
    t0 = time.monotonic()
    probe = dict(env, DISKVAULT_CACHE_DIR=str(tmp_path / "probe"))
    run_cli("init", "-r", url + "-probe", env=probe)
    run_cli("snapshot", "-r", url + "-probe", img, env=_kill_env(probe))
    full = time.monotonic() - t0
    rng = random.Random(20)
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-m", "diskvault", "snapshot", "-r", url, str(img)],
                                env=_kill_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        listed = json.loads(run_cli("snapshots", "-r", url, "--json", env=env).stdout)
        assert listed[0]["id"] == s1  # a finished trial may add one; none is lost
        run_cli("check", "-r", url, env=env)
    s2 = snapshot(url, img, env)
    run_cli("check", "-r", url, "--read-data", env=env)
    assert restored(url, s1, tmp_path / "out", env) == first
    assert restored(url, s2, tmp_path / "out", env) == big


def test_server_killed_5_times_during_snapshots(tmp_path, monkeypatch):
    """SIGKILL of the S3 server (a dedicated SeaweedFS) during a snapshot, 5 times, restarted
    on its data each time: the client fails with a one-line error or, its retries outlasting
    the restart, finishes; the repository
    stays sound, earlier snapshots restore bit-identically, and the next snapshot succeeds."""
    import secrets as _secrets

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "servers"))
    import s3servers

    from helpers import cli_env

    srv = s3servers.start("seaweedfs", tmp_path / "weed")
    try:
        srv.make_bucket("crash")
        for k, v in srv.env().items():  # for this process's own look at the bucket
            monkeypatch.setenv(k, v)
        url = srv.url("crash", f"t-{_secrets.token_hex(4)}")
        env = cli_env(**srv.env(), DISKVAULT_CACHE_DIR=str(tmp_path / "cache"))
        run_cli("init", "-r", url, env=env)
        img = tmp_path / "disk.img"
        kept = []
        for round_ in range(5):
            data = random_bytes(3 << 20, 80 + round_)
            img.write_bytes(data)
            kept.append((snapshot(url, img, env), data))
            img.write_bytes(random_bytes(48 << 20, 90 + round_))
            store = repository_module.remote_storage(url)
            packs = sum(1 for _ in store.list("packs"))
            proc = subprocess.Popen([sys.executable, "-m", "diskvault", "snapshot", "-r", url, str(img)],
                                    env=_kill_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            while sum(1 for _ in store.list("packs")) < packs + 2 + round_ and proc.poll() is None:
                time.sleep(0.02)  # killed after a few of its 1 MiB packs are in: a different moment each round
            assert proc.poll() is None  # under a running snapshot (48 packs to go)
            srv.kill()
            time.sleep(0.5)
            srv = s3servers.start_seaweed(srv.run_dir, ports=srv.ports)
            _, err = proc.communicate(timeout=300)
            if proc.returncode != 0:  # the server went away under it: one line, never a traceback
                lines = err.decode().strip().splitlines()
                assert lines and "Traceback" not in err.decode() and lines[-1].startswith("diskvault: error"), err
            run_cli("check", "-r", url, env=env)
        run_cli("check", "-r", url, "--read-data", env=env)
        for sid, data in kept:
            assert restored(url, sid, tmp_path / "out", env) == data
        img.write_bytes(random_bytes(4 << 20, 99))
        snapshot(url, img, env)
    finally:
        srv.stop()


def test_a_read_only_cache_directory_is_named_with_what_to_do(remote, tmp_path):
    """A cache directory on a read-only mount (a real tmpfs, remounted read-only after a first
    sync filled it): every command names the cache folder and DISKVAULT_CACHE_DIR (exit 3),
    not an SQLite "unable to open database file" about permissions and ulimit -n."""
    url, env = remote
    run_cli("init", "-r", url, env=env)
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(cache)], check=True)
    try:
        renv = dict(env, DISKVAULT_CACHE_DIR=str(cache))
        run_cli("snapshots", "-r", url, env=renv)
        subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
        for args in (["snapshots", "-r", url], ["copy", "-r", url, "--to", tmp_path / "elsewhere"]):
            proc = run_cli(*args, env=renv, check=False)
            err = one_line_error(proc)
            assert proc.returncode == 3 and "read-only file system" in err and "DISKVAULT_CACHE_DIR" in err, err
    finally:
        subprocess.run(["umount", str(cache)], check=True)


def test_two_machines_copying_one_snapshot_at_once_record_it_once(remote, tmp_path, monkeypatch):
    """Issue 14's copy offsite from two machines at once: machine B looked at the bucket
    (its cache synced) before machine A recorded the copy. Both copy; the record is the
    source's with the tree replaced, so both write one record under one id, and B's
    create-only write tells it that A was first."""
    from diskvault.ops.copy import copy

    url, env = remote
    local = tmp_path / "local"
    run_cli("init", "-r", local, env=env)
    run_cli("init", "-r", url, env=env)
    img = tmp_path / "disk.img"
    img.write_bytes(random_bytes(3 << 20, 41))
    run_cli("snapshot", "-r", local, img, env=env)
    monkeypatch.setenv("DISKVAULT_CACHE_DIR", str(tmp_path / "cache-b"))
    with Repository.open(str(local), passphrase=secret) as src, Repository.open(url, passphrase=secret) as dst_b:
        res_a = json.loads(run_cli("copy", "-r", local, "--to", url, "--json", env=env).stdout)  # machine A
        assert len(res_a["copied"]) == 1
        monkeypatch.setattr(Repository, "sync", lambda self: None)  # B does not see A's record: the race
        res_b = copy(src, dst_b)
        assert res_b.copied == [] and res_b.skipped == [{"source_id": res_a["copied"][0]["source_id"],
                                                         "id": res_a["copied"][0]["id"]}]
    monkeypatch.undo()
    env_c = dict(env, DISKVAULT_CACHE_DIR=str(tmp_path / "cache-c"))  # a third machine, fresh cache
    listed = json.loads(run_cli("snapshots", "-r", url, "--json", env=env_c).stdout)
    assert [s["id"] for s in listed] == [res_a["copied"][0]["id"]]
    assert restored(url, "latest", tmp_path / "out", env_c) == img.read_bytes()
    run_cli("check", "-r", url, env=env_c)
