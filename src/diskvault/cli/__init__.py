"""The diskvault command line: parsing, progress and formatting only; one module a command.

``main`` turns DiskvaultError into one line on stderr and its documented exit code
(docs/cli.md); a usage error (click's) is one line too, exit 2. An OSError that gets this
far is about a source or target (the repository's own are translated where they happen) and
exits by errno (``os_error``: 6 out of space, else 5); an SQLite error by its code
(``catalog_error``: a damaged catalog is 3). Only an unexpected exception is an internal
error: one line too (DISKVAULT_DEBUG=1 shows the traceback), exit 1.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import traceback
from typing import Annotated, NoReturn

import typer

from ..errors import EXIT_INTERNAL, EXIT_USAGE, DiskvaultError, Interrupted, os_error
from .check_cmd import check
from .copy_cmd import copy
from .export_cmd import export
from .forget_cmd import forget
from .info_cmd import info
from .init_cmd import init
from .key_cmd import key_app
from .job_cmd import job_app
from .mount_cmd import mount
from .partitions_cmd import partitions
from .prune_cmd import prune
from .repair_cmd import repair
from .rescue_cmd import rescue
from .restore_cmd import restore
from .serve_cmd import serve
from .snapshot_cmd import snapshot
from .snapshots_cmd import snapshots
from .unlock_cmd import unlock
from .verify_cmd import verify

app = typer.Typer(
    name="diskvault",
    help="Deduplicating system-image backup: snapshot disks and images often, restore them exactly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: rich cuts long option names short on an 80-column terminal
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("diskvault")
        except PackageNotFoundError:  # run from a source tree
            from .. import __version__ as number
        typer.echo(f"diskvault {number}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version (diskvault X.Y.Z) and exit.")] = False,
) -> None:
    pass


# click's exceptions, from the click typer uses (newer typers vendor their own copy)
click = sys.modules[typer.BadParameter.__module__]

for command in (init, snapshot, snapshots, info, restore, forget, prune, unlock, check, verify, repair,
                partitions, serve, mount, export, copy):
    app.command()(command)
app.add_typer(key_app, name="key")
app.add_typer(job_app, name="job")
app.add_typer(rescue, name="rescue")


def _interrupt(signum: int, frame: object) -> None:
    # Raised instead of KeyboardInterrupt so that click does not swallow it: operations
    # clean up (abort the open pack, remove a half-written target) and main exits 130.
    raise Interrupted("interrupted; the repository holds everything up to the last completed step")


def main() -> None:
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    for stream in (sys.stdout, sys.stderr):  # a name that is not UTF-8 prints as its bytes, as ls shows it
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    try:
        code = app(standalone_mode=False)  # click's exceptions come here; --help and typer.Exit return a code
    except click.NoArgsIsHelpError as exc:  # bare `diskvault` (or `diskvault key`): the help, exit 2
        try:
            print(exc.ctx.get_help())
        except BrokenPipeError:
            pass
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        print(usage_line(exc), file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        print(f"diskvault: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(Interrupted.exit_code)
    except DiskvaultError as exc:
        _fail(exc)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as exc:  # not about the repository (that one is named where it happens): a source or target
        _fail(os_error(exc), debug=True)
    except sqlite3.Error as exc:
        from ..repository.catalog import catalog_error

        known = catalog_error(exc)
        if known is None:
            _internal(exc)
        _fail(known, debug=True)
    except Exception as exc:  # a bug: still one line unless asked for more
        _internal(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(exc: DiskvaultError, debug: bool = False) -> NoReturn:
    if debug and os.environ.get("DISKVAULT_DEBUG"):
        traceback.print_exc()
    print(f"diskvault: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def _internal(exc: Exception) -> NoReturn:
    if os.environ.get("DISKVAULT_DEBUG"):
        traceback.print_exc()
    print(f"diskvault: internal error: {type(exc).__name__}: {exc} (set DISKVAULT_DEBUG=1 for a traceback)",
          file=sys.stderr)
    sys.exit(EXIT_INTERNAL)


def usage_line(exc: click.UsageError) -> str:
    """``diskvault: error: MESSAGE: see diskvault COMMAND --help``: one line, whatever click's message."""
    message = "; ".join(line.strip() for line in exc.format_message().splitlines() if line.strip()).rstrip(".")
    names = []
    ctx = exc.ctx
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    if exc.ctx is None:  # raised while parsing, before the command had a context: the command typed
        first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        known = {c.name or c.callback.__name__ for c in app.registered_commands} | {g.name for g in app.registered_groups}
        names = [first] if first in known else []
    return f"diskvault: error: {message}: see {' '.join(['diskvault', *reversed(names)])} --help"
