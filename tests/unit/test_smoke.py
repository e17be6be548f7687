"""Smoke test of the CLI round trip (the thorough tests live beside it)."""

from helpers import random_bytes, run_cli


def test_snapshot_restore_round_trip(tmp_path, repo_path):
    img = tmp_path / "a.img"
    img.write_bytes(random_bytes(300_000, 1) + bytes(200_000) + random_bytes(100_000, 2))
    run_cli("snapshot", "-r", repo_path, img)
    run_cli("restore", "-r", repo_path, "latest", tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == img.read_bytes()


def test_each_command_loaded_alone_is_the_same_command():
    """`diskvault NAME ...` loads only NAME's module (start-up): the command line it builds
    must offer exactly what the whole one does for NAME, and the whole one every command."""
    import typer.main

    from diskvault import cli

    whole = typer.main.get_command(cli.build())
    assert list(whole.commands) == list(cli._COMMANDS)
    for name in cli._COMMANDS:
        alone = typer.main.get_command(cli.build({name}))
        assert list(alone.commands) == [name]
        a, w = alone.commands[name], whole.commands[name]
        assert [p.opts for p in a.params] == [p.opts for p in w.params]
        assert a.help == w.help and sorted(getattr(a, "commands", {})) == sorted(getattr(w, "commands", {}))
