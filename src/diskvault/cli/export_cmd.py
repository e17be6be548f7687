"""diskvault export: a snapshot as a virtual disk (VHDX, VMDK, qcow2, VDI, raw) via qemu-img."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    HostOpt, JsonOpt, NoLockOpt, PasswordCommandOpt, PasswordFileOpt, RepoOpt, SourceOpt, TagOpt, human, open_repo,
    passphrase, print_json,
)


def export(
    repo: RepoOpt,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id, prefix, latest or latest:TAG.")],
    output: Annotated[str, typer.Argument(help="Virtual disk to write: .vhdx, .vmdk, .qcow2, .vdi or .img.")],
    host: HostOpt = None,
    source_filter: SourceOpt = None,
    tag: TagOpt = [],  # noqa: B006
    fmt: Annotated[str | None, typer.Option("--format", help="vhdx, vmdk, qcow2, vdi or raw (default: from the "
                                            "extension).", metavar="FORMAT")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    json_out: JsonOpt = False,
    no_lock: NoLockOpt = False,
    password_file: PasswordFileOpt = None,
    password_command: PasswordCommandOpt = None,
) -> None:
    """Write a snapshot as a virtual disk that Windows, Hyper-V, VMware, VirtualBox or QEMU opens."""
    from ..ops.export import export as export_op

    with open_repo(repo, write=False, no_lock=no_lock, secret=passphrase(password_file, password_command)) as r:
        res = export_op(r, r.resolve(snapshot, host, source_filter, tag), output, fmt, force)
    if json_out:
        print_json(res.to_json())
    else:
        typer.echo(f"exported snapshot {res.snapshot[:12]} to {res.output} ({res.format}): {human(res.size)} disk, "
                   f"{human(res.file_bytes)} on disk, in {res.duration:.1f} s", err=True)
