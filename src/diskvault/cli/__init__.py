"""The diskvault command line: parsing, progress and formatting only; one module a command.

``main`` turns DiskvaultError into one line on stderr and its documented exit code
(docs/cli.md); an unexpected exception prints one line too (DISKVAULT_DEBUG=1 shows the
traceback) and exits 1.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

import click
import typer

from ..errors import EXIT_INTERNAL, EXIT_INTERRUPTED, DiskvaultError
from .forget_cmd import forget
from .info_cmd import info
from .init_cmd import init
from .prune_cmd import prune
from .restore_cmd import restore
from .snapshot_cmd import snapshot
from .snapshots_cmd import snapshots
from .unlock_cmd import unlock

app = typer.Typer(
    name="diskvault",
    help="Deduplicating system-image backup: snapshot disks and images often, restore them exactly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for command in (init, snapshot, snapshots, info, restore, forget, prune, unlock):
    app.command()(command)


# typer >= 0.16 vendors click: its usage errors are not click's own classes, so catch both
_CLICK_ERRORS = (click.ClickException,
                 *[c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"])
_EXITS = (click.exceptions.Exit, typer.Exit)
_ABORTS = (KeyboardInterrupt, click.exceptions.Abort, typer.Abort)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except _ABORTS:
        print("diskvault: interrupted; the repository is unchanged since the last completed step", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except _EXITS as exc:
        code = exc.exit_code
    except _CLICK_ERRORS as exc:
        exc.show()
        code = exc.exit_code
    except DiskvaultError as exc:
        print(f"diskvault: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # a bug: still one line unless asked for more
        if os.environ.get("DISKVAULT_DEBUG"):
            traceback.print_exc()
        print(f"diskvault: internal error: {type(exc).__name__}: {exc} (set DISKVAULT_DEBUG=1 for a traceback)", file=sys.stderr)
        code = EXIT_INTERNAL
    sys.exit(code if isinstance(code, int) else 0)
