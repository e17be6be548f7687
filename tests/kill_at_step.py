"""Run ``python -m diskvault ARGS`` and SIGKILL itself at I/O step ``KILL_AT_STEP``.

Test-only wrapper (tests/e2e/test_prune_kill.py): counts the steps where a crash matters:
every write, flush and commit of a file, every deletion, every catalog transaction (before and
after its COMMIT) and every blob read, and sends itself SIGKILL just before step K. With
K = -1 it only prints the number of steps to stderr at exit."""

from __future__ import annotations

import atexit
import os
import signal
import sys

from diskvault import repository
from diskvault.repository import catalog
from diskvault.storage import local

KILL_AT = int(os.environ["KILL_AT_STEP"])
steps = 0


def step() -> None:
    global steps
    if steps == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    steps += 1


def hook(cls, name: str, after: bool = False) -> None:
    orig = getattr(cls, name)

    def wrapped(*args, **kwargs):
        step()
        out = orig(*args, **kwargs)
        if after:
            step()
        return out

    setattr(cls, name, wrapped)


hook(local.LocalFileWriter, "write")
hook(local.LocalFileWriter, "flush", after=True)
hook(local.LocalFileWriter, "commit", after=True)
hook(local.LocalStorage, "delete", after=True)
hook(catalog._Transaction, "__exit__", after=True)
hook(repository.Repository, "decode")
hook(repository.Repository, "load_tree_node")
if KILL_AT < 0:
    atexit.register(lambda: print(f"STEPS {steps}", file=sys.stderr))

from diskvault.cli import main  # noqa: E402

sys.argv = ["diskvault", *sys.argv[1:]]
main()
