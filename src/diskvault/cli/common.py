"""Shared CLI pieces: the repository option, --no-lock, the snapshot filters, JSON output,
human sizes, plurals, the progress bar."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..repository import Repository

RepoOpt = Annotated[
    str,
    typer.Option(
        "--repo", "-r", envvar="DISKVAULT_REPO", show_envvar=True,
        help="Repository directory.", metavar="PATH",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]

NoLockOpt = Annotated[bool, typer.Option(
    "--no-lock", help="Do not lock the repository (e.g. on read-only media); a prune running meanwhile may remove data being read.")]

# snapshot filters (restic's --host/--path/--tag): commands that name a snapshot resolve
# latest among the snapshots they let through (Repository.resolve)
HostOpt = Annotated[str | None, typer.Option(
    "--host", metavar="HOST", help="Only snapshots of this host (latest is the newest of them).")]
SourceOpt = Annotated[str | None, typer.Option(
    "--source", metavar="PATH", help="Only snapshots of this source: its path, or a stream's --stdin-filename.")]
TagOpt = Annotated[list[str], typer.Option(
    "--tag", metavar="TAG", help="Only snapshots carrying this tag (repeatable: all of them).")]


def open_repo(path: str, write: bool = True, no_lock: bool = False) -> Repository:
    """Open the repository for a command that changes it (``write``) or only reads it; a
    reader's notes (a lock skipped) go to stderr as one line each."""
    from ..repository import Repository

    r = Repository.open(path, write=write, lock=not no_lock)
    r.note = lambda message: typer.echo(f"note: {message}", err=True)
    return r


def print_json(obj: object, err: bool = False) -> None:
    """``obj`` as strict indented JSON on stdout (on stderr with ``err``: when stdout carries
    data); a string field X that is not UTF-8 (a path) is printed readable, with X_raw beside
    it holding its exact bytes in base64 (rawnames.py)."""
    from ..rawnames import escape

    out = sys.stderr if err else sys.stdout
    out.write(json.dumps(escape(obj), indent=2, default=str) + "\n")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 range"``, ``"2 ranges"``, ``"0 ranges"``; ``many`` for irregular plurals."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds / 1e6:.0f} MB/s" if seconds > 0 else "-"


class Bar:
    """A rich progress bar on stderr (bytes, MB/s, ETA); silent when stderr is no terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._p = None
        self._task = None

    def start(self, total: int | None, what: str) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress as RichProgress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._p = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
            TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
        )
        self._p.start()
        self._task = self._p.add_task(what, total=total)

    def advance(self, n: int) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()
