"""Shared test helpers: deterministic data, running the CLI, building real images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import blake3

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def random_bytes(n: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (blake3 XOF of the seed)."""
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=n)


# the passphrase of the test repositories (encrypted, as init makes them by default): the
# CLI gets it as DISKVAULT_PASSWORD (cli_env), in-process code as ``passphrase=secret``
PASSPHRASE = "correct horse battery staple"


def secret() -> str:
    return PASSPHRASE


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DISKVAULT_REPO", None)
    for name in ("DISKVAULT_PASSWORD_FILE", "DISKVAULT_PASSWORD_COMMAND"):
        env.pop(name, None)
    env["DISKVAULT_PASSWORD"] = PASSPHRASE
    env.update(extra)
    return env


def run_cli(*args: str | os.PathLike, input: bytes | None = None, check: bool = True,
            env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m diskvault ARGS``; ``check`` asserts exit 0 and shows stderr if not."""
    proc = subprocess.run(
        [sys.executable, "-m", "diskvault", *map(str, args)],
        input=input, capture_output=True, env=env or cli_env(), timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"diskvault {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\nstderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def pack_entries(repo: Path, pack: Path) -> list:
    """The entries of ``pack`` (a file of the repository ``repo``), read with its key."""
    from diskvault.repository import Repository
    from diskvault.repository.pack import read_pack_index

    with Repository.open(str(repo), write=False, passphrase=secret) as r:
        return read_pack_index(r.storage, str(Path(pack).relative_to(repo)), r.crypto)


def record_bytes(repo: Path, sid: str) -> bytes:
    """The plaintext of snapshot ``sid``'s record file (opened with the key when encrypted)."""
    from diskvault.repository import Repository

    name = f"snapshots/{sid}.json"
    with Repository.open(str(repo), write=False, passphrase=secret) as r:
        return r.crypto.open(name.encode(), (Path(repo) / name).read_bytes())


def one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Assert that a CLI run exited ``code`` with one line ``diskvault: error: …`` holding
    each of ``words``; returns that line."""
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert err.count("\n") == 1 and err.startswith("diskvault: error: "), err
    for w in words:
        assert w in err, (w, err)
    return err


def tool(name: str) -> str:
    for d in ("", "/usr/sbin/", "/sbin/"):
        path = shutil.which(name) if not d else d + name
        if path and os.path.exists(path):
            return path
    raise AssertionError(f"{name} is not installed: run scripts/setup.sh (make test does)")


def make_tree(folder: Path, files: int = 40, size: int = 64 << 10, seed: int = 1) -> Path:
    """A folder of deterministic files (some compressible, some random)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        data = random_bytes(size, seed * 1000 + i)
        if i % 2:
            data = (b"log line %d: all is well\n" % i) * (size // 24)
        (folder / f"file{i:03}.bin").write_bytes(data)
    return folder


def make_ext4(image: Path, size_mb: int, content: Path) -> Path:
    """A real ext4 filesystem image holding ``content`` (mke2fs -d)."""
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
    subprocess.run(
        [tool("mke2fs"), "-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d", str(content), str(image)],
        check=True, capture_output=True,
    )
    return image


def debugfs(image: Path, *commands: str) -> None:
    """Change an ext4 image in place (debugfs -w), as a running system would."""
    script = "\n".join(commands) + "\n"
    subprocess.run([tool("debugfs"), "-w", "-f", "-", str(image)], input=script.encode(),
                   check=True, capture_output=True)


def e2fsck_clean(image: Path) -> bool:
    return subprocess.run([tool("e2fsck"), "-fn", str(image)], capture_output=True).returncode == 0
