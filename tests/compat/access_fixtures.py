"""Helpers for the access tests: run `diskvault serve`/`mount` as subprocesses and stop them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from helpers import cli_env, tool


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextmanager
def nbd_server(repo: Path, bind: str = "127.0.0.1:0", *args: str, **popen):
    """Start `diskvault serve` on a free port (more ARGS, Popen keywords such as
    preexec_fn); yields (process, port); always stops it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "diskvault", "serve", "-r", str(repo), "--bind", bind, "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), **popen,
    )
    try:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"serve did not start: {proc.wait(10)} {proc.stderr.read().decode()}")
        proc.info = json.loads(line)  # the --json start line
        yield proc, proc.info["port"]
    finally:
        _stop(proc)


@contextmanager
def fuse_mount(repo: Path, mountpoint: Path):
    """Run `diskvault mount` in the foreground as a subprocess until it is mounted; always
    unmounts (fusermount3 -u, then SIGTERM) at the end."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "diskvault", "mount", "-r", str(repo), str(mountpoint)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise AssertionError(f"mount exited {proc.returncode}: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("mount did not appear within 20 s")
            time.sleep(0.05)
        yield proc
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run([tool("fusermount3"), "-u", str(mountpoint)], capture_output=True)
        _stop(proc, signal.SIGTERM)
        if os.path.ismount(mountpoint):  # last resort: never leave a mount behind
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
