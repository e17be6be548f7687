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
from .info_cmd import info
from .init_cmd import init
from .mount_cmd import mount
from .partitions_cmd import partitions
from .restore_cmd import restore
from .serve_cmd import serve
from .snapshot_cmd import snapshot
from .snapshots_cmd import snapshots

app = typer.Typer(
    name="diskvault",
    help="Deduplicating system-image backup: snapshot disks and images often, restore them exactly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for command in (init, snapshot, snapshots, info, restore, partitions, serve, mount):
    app.command()(command)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("diskvault: interrupted; the repository is unchanged since the last completed step", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
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
