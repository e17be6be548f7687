"""The diskvault command line: parsing, progress and formatting only; one module a command.

``main`` turns DiskvaultError into one line on stderr and its documented exit code
(docs/cli.md); a usage error (click's) is one line too, exit 2. An OSError that gets this
far is about a source or target (the repository's own are translated where they happen) and
exits by errno (``os_error``: 6 out of space, else 5); an SQLite error by its code
(``catalog_error``: a damaged catalog is 3). Only an unexpected exception is an internal
error: one line too (DISKVAULT_DEBUG=1 shows the traceback), exit 1.
"""

from __future__ import annotations

import importlib
import os
import signal
import sqlite3
import sys
import traceback
from typing import Annotated, NoReturn

import typer

from ..errors import EXIT_INTERNAL, EXIT_USAGE, DiskvaultError, Interrupted, os_error

# every command: its name, module and function (or sub-application), in the order --help lists them
_COMMANDS = {
    "init": ("init_cmd", "init"), "snapshot": ("snapshot_cmd", "snapshot"), "snapshots": ("snapshots_cmd", "snapshots"),
    "info": ("info_cmd", "info"), "restore": ("restore_cmd", "restore"), "forget": ("forget_cmd", "forget"),
    "prune": ("prune_cmd", "prune"), "unlock": ("unlock_cmd", "unlock"), "check": ("check_cmd", "check"),
    "verify": ("verify_cmd", "verify"), "repair": ("repair_cmd", "repair"), "partitions": ("partitions_cmd", "partitions"),
    "serve": ("serve_cmd", "serve"), "mount": ("mount_cmd", "mount"), "export": ("export_cmd", "export"),
    "copy": ("copy_cmd", "copy"), "key": ("key_cmd", "key_app"), "job": ("job_cmd", "job_app"),
    "rescue": ("rescue_cmd", "rescue"),
}
_GROUPS = {"key", "job", "rescue"}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("diskvault")
        except PackageNotFoundError:  # run from a source tree
            from .. import __version__ as number
        typer.echo(f"diskvault {number}")
        raise typer.Exit()


def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version (diskvault X.Y.Z) and exit.")] = False,
) -> None:
    pass


def build(names: set[str] | None = None) -> typer.Typer:
    """The command line with every command, or only those ``names`` (a command's own run:
    the other commands' modules are not imported nor their options built, ~60 ms less
    start-up for every command)."""
    app = typer.Typer(
        name="diskvault",
        help="Deduplicating system-image backup: snapshot disks and images often, restore them exactly.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # click's plain help: rich cuts long option names short on an 80-column terminal
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_options)
    for name, (module, attr) in _COMMANDS.items():
        if names is None or name in names:
            command = getattr(importlib.import_module(f".{module}", __name__), attr)
            if name in _GROUPS:
                app.add_typer(command, name=name)
            else:
                app.command()(command)
    return app


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the whole command line (docs and tests read it)
        app = globals()["app"] = build()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# click's exceptions, from the click typer uses (newer typers vendor their own copy)
click = sys.modules[typer.BadParameter.__module__]


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
        # the command named first (options before it are the program's own: no values) is
        # the only one loaded; anything else (--help, a misspelt command) loads them all
        first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        app = build({first}) if first in _COMMANDS else build()
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
        names = [first] if first in _COMMANDS else []
    return f"diskvault: error: {message}: see {' '.join(['diskvault', *reversed(names)])} --help"
