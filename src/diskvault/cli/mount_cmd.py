"""diskvault mount: browse snapshots as files through FUSE, in the foreground until unmounted."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ..errors import Interrupted
from .common import JsonOpt, NoLockOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, open_repo, passphrase


def mount(
    repo: RepoOpt,
    mountpoint: Annotated[str, typer.Argument(help="Empty directory to mount on.")],
    allow_other: Annotated[bool, typer.Option("--allow-other", help="Let other users read the mount (needs "
                                              "user_allow_other in /etc/fuse.conf unless root).")] = False,
    json_out: JsonOpt = False,
    no_lock: NoLockOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Mount every snapshot read-only: MOUNT/<id>/disk.img, MOUNT/<id>/p<N>.img, MOUNT/latest. Ctrl-C unmounts."""
    from ..ops.access.fuse_mount import check_mountpoint, mount_repository

    def ready(path: str) -> None:
        if json_out:
            sys.stdout.write(json.dumps({"mountpoint": path, "mounted": True}) + "\n")
        else:
            typer.echo(f"mounting snapshots read-only on {path}: Ctrl-C or 'fusermount3 -u {path}' unmounts")
        sys.stdout.flush()

    check_mountpoint(mountpoint)  # before the repository: permission problems first, in one line
    with open_repo(repo, write=False, no_lock=no_lock, secret=passphrase(password_file, password_command)) as r:
        try:
            mount_repository(r, mountpoint, allow_other=allow_other, on_ready=ready)
        except (KeyboardInterrupt, Interrupted):  # Ctrl-C before libfuse took over its signals: nothing mounted
            pass
    if json_out:
        sys.stdout.write(json.dumps({"mountpoint": mountpoint, "mounted": False}) + "\n")
    else:
        typer.echo(f"unmounted {mountpoint}", err=True)
