"""Shared CLI pieces: the repository option, the passphrase sources, --no-lock, the snapshot
filters, JSON output, human sizes, plurals, the progress bar."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..repository import Repository

RepoOpt = Annotated[
    str,
    typer.Option(
        "--repo", "-r", envvar="DISKVAULT_REPO", show_envvar=True,
        help="Repository: a directory, or s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX] (docs/remote.md).", metavar="PATH|URL",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]

# the passphrase of an encrypted repository, restic's sources and precedence: a command, else
# a file, else DISKVAULT_PASSWORD, else a prompt on a terminal (docs/security.md)
PasswordFileOpt = Annotated[str | None, typer.Option(
    "--password-file", envvar="DISKVAULT_PASSWORD_FILE", show_envvar=True, metavar="FILE",
    help="Read the repository passphrase from FILE (surrounding white space is dropped).")]
PasswordCommandOpt = Annotated[str | None, typer.Option(
    "--password-command", envvar="DISKVAULT_PASSWORD_COMMAND", show_envvar=True, metavar="COMMAND",
    help="Run COMMAND (split like a shell, no shell) and read the passphrase from its output.")]

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


MAX_PASSWORD = 64 << 10  # bytes of a password file (or command output) read at most: never an endless one


def passphrase(password_file: str | None = None, password_command: str | None = None,
               confirm: bool = False, what: str = "repository passphrase", env: bool = True,
               variable: str = "DISKVAULT_PASSWORD") -> Callable[[], str]:
    """The passphrase source the user chose, asked only when called (an unencrypted repository
    never asks): ``--password-command`` (or DISKVAULT_PASSWORD_COMMAND), else ``--password-file``
    (or DISKVAULT_PASSWORD_FILE), else DISKVAULT_PASSWORD, else a prompt when stdin is a
    terminal (twice with ``confirm``); surrounding white space is dropped from each (a file or
    a command's output of at most MAX_PASSWORD bytes); ``env=False`` (a new passphrase, ``key add``): not
    DISKVAULT_PASSWORD, which gives the current one; ``variable``: the variable read instead of
    DISKVAULT_PASSWORD (copy's destination: DISKVAULT_TO_PASSWORD). Raises PasswordError (exit 10): no source and no
    terminal, an unreadable file, a failing command, an empty passphrase; UsageError when both
    a file and a command are given (as restic)."""
    from ..errors import PasswordError, UsageError

    got: list[str] = []

    def read() -> str:
        if got:
            return got[0]
        if password_file and password_command:  # only when a passphrase is needed (as the rest)
            flag = "--" + variable.removeprefix("DISKVAULT_").lower().replace("_", "-")  # --to-password for copy's
            raise UsageError(f"{flag}-file and {flag}-command (or {variable}_FILE and {variable}_COMMAND) both "
                             "given: choose one")
        if password_command:
            secret = _run_password_command(password_command)
        elif password_file:
            try:
                with open(password_file, "rb") as f:
                    data = f.read(MAX_PASSWORD + 1)
            except OSError as exc:
                raise PasswordError(f"cannot read the password file {password_file} "
                                    f"({(exc.strerror or str(exc)).lower()}): fix the path or its permissions") from None
            if len(data) > MAX_PASSWORD:
                raise PasswordError(f"the password file {password_file} is too long (over {MAX_PASSWORD} bytes): "
                                    "give a file that holds only the passphrase")
            secret = data.decode("utf-8", "surrogateescape")
        elif env and os.environ.get(variable):
            secret = os.environ[variable]
        elif sys.stdin.isatty():
            import getpass

            try:
                secret = getpass.getpass(f"enter {what}: ")
                if confirm and getpass.getpass(f"enter {what} again: ") != secret:
                    raise PasswordError("the two passphrases differ: nothing was changed; run the command again")
            except EOFError:
                raise PasswordError("no passphrase was typed: nothing was changed") from None
        elif not env:
            raise PasswordError(f"no {what} was given: pass --new-password-file FILE, or run on a terminal to be asked")
        else:
            first = "the repository is encrypted and no passphrase" if what == "repository passphrase" \
                else f"no {what}"
            raise PasswordError(f"{first} was given: set DISKVAULT_PASSWORD_FILE, DISKVAULT_PASSWORD_COMMAND or "
                                "DISKVAULT_PASSWORD, pass --password-file or --password-command, or run on a "
                                "terminal to be asked")
        secret = secret.strip()  # from every source alike, so each opens what another made
        if not secret:
            raise PasswordError(f"the {what} is empty: an empty passphrase is refused")
        got.append(secret)
        return secret

    return read


def _run_password_command(command: str) -> str:
    import shlex
    import subprocess

    from ..errors import PasswordError

    try:
        argv = shlex.split(command)
        if not argv:
            raise ValueError("it is empty")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except (ValueError, OSError) as exc:
        raise PasswordError(f"the password command {command!r} cannot run ({exc}): fix --password-command") from None
    with proc:
        out = proc.stdout.read(MAX_PASSWORD + 1)
        if len(out) > MAX_PASSWORD:
            proc.kill()
        proc.wait()
    if len(out) <= MAX_PASSWORD and proc.returncode != 0:
        raise PasswordError(f"the password command {command!r} exited {proc.returncode}: fix it or its store first")
    if len(out) > MAX_PASSWORD:
        raise PasswordError(f"the password command {command!r} printed over {MAX_PASSWORD} bytes: "
                            "it should print only the passphrase")
    return out.decode("utf-8", "surrogateescape")


def open_repo(path: str, write: bool = True, no_lock: bool = False,
              secret: Callable[[], str] | None = None) -> Repository:
    """Open the repository for a command that changes it (``write``) or only reads it, asking
    ``secret`` (a ``passphrase`` source) only when it is encrypted; a reader's notes (a lock skipped) go to
    stderr as one line each."""
    from ..repository import Repository

    r = Repository.open(path, write=write, lock=not no_lock, passphrase=secret or passphrase())
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
