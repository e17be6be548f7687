"""Every command is documented (docs/cli.md and the README) and has working --help."""

import re
from pathlib import Path

import pytest

from diskvault.cli import app
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)
GROUPS = sorted(g.typer_instance.info.name for g in app.registered_groups)  # `key list`, ...


def test_commands_found():
    assert {"init", "snapshot", "snapshots", "info", "restore"} <= set(COMMANDS)
    assert "key" in GROUPS


@pytest.mark.parametrize("command", COMMANDS + GROUPS)
def test_command_is_documented(command):
    assert re.search(rf"^## {command}\b", (ROOT / "docs" / "cli.md").read_text(), re.M), command
    assert f"`{command}" in (ROOT / "README.md").read_text(), command


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    out = run_cli(command, "--help").stdout.decode()
    assert "--repo" in out and "--json" in out


def _sections() -> dict[str, str]:
    """docs/cli.md split at its ``## `` headings; key "" is the text before the first."""
    parts = re.split(r"^## (\S+).*$", (ROOT / "docs" / "cli.md").read_text(), flags=re.M)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2]))}


def _flags(command) -> list[str]:
    """The flags of a command, or of every subcommand of a group (``key``)."""
    params = [p for c in [command, *getattr(command, "commands", {}).values()] for p in c.params]
    return sorted({o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")})


def _documented(flag: str, text: str) -> bool:
    """``flag`` appears inside a `code span` of ``text`` (``-n`` in `-n/--dry-run`, not in `--no-x`)."""
    return bool(re.search(rf"`[^`]*(?<![\w-]){re.escape(flag)}(?![\w-])[^`]*`", text))


@pytest.mark.parametrize("command", COMMANDS + GROUPS)
def test_every_flag_is_documented(command):
    """Every flag `diskvault COMMAND --help` lists is in that command's section of docs/cli.md
    (or, for the flags every command has, in its introduction)."""
    from typer.main import get_command

    cmd = get_command(app).commands[command]
    sections = _sections()
    text = sections.get(command, "") + sections[""]
    missing = [f for f in _flags(cmd) if not _documented(f, text)]
    assert not missing, f"docs/cli.md, section {command}: document {', '.join(missing)}"
    for sub in getattr(cmd, "commands", {}) or [None]:  # what --help shows is what we checked
        help_text = run_cli(*[command, sub][: 2 if sub else 1], "--help", env=None).stdout.decode()
        shown = _flags(cmd.commands[sub]) if sub else _flags(cmd)
        assert all(f in help_text for f in shown if f != "-h")


def test_global_flags_are_documented():
    from typer.main import get_command

    root = get_command(app)
    flags = sorted({o for p in root.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")})
    missing = [f for f in flags if not _documented(f, _sections()[""])]
    assert not missing, missing
