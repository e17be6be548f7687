"""Debian packages the rescue image is made of: downloaded once, unpacked, cached.

``package(name, cache)`` returns the unpacked tree of the named binary package (a
metapackage such as ``linux-image-amd64`` is followed to the package it depends on),
fetched with ``apt-get download`` into ``cache/debs`` and unpacked with ``dpkg-deb -x`` into
``cache/trees``; a package already in the cache at the version apt would fetch is reused,
and when apt does not know the package or cannot download it, the newest cached one is
used. Nothing is installed on the machine. ``kernel(cache)`` picks the kernel out of the linux-image package and
``modules(...)`` resolves kernel modules (``depends=`` of each ``.ko``) in load order.

Raises RescueBuildError with a one-line cause (apt-get missing, package unknown, download
failed).
"""

from __future__ import annotations

import lzma
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ...errors import RescueBuildError


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise RescueBuildError(f"rescue build needs {cmd[0]} (a Debian or Ubuntu system with apt): "
                               "run it there, or install apt") from None
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise RescueBuildError(f"rescue build: {' '.join(map(str, cmd[:3]))} failed: {last}: "
                               "check the network and `apt-get update`")
    return done.stdout


def _resolve(name: str) -> tuple[str, str | None]:
    """(real package name, candidate version or None when apt does not know it)."""
    try:
        show = _run("apt-cache", "show", "--no-all-versions", name)
    except RescueBuildError:
        return name, None
    if "Package:" not in show:  # a virtual package
        return name, None
    version = re.search(r"^Version: (\S+)", show, re.M).group(1)
    dep = re.search(r"^Depends: (linux-image-[0-9]\S*)", show, re.M) if name == "linux-image-amd64" else None
    return (_resolve(dep.group(1).rstrip(","))) if dep else (name, version)


def package(name: str, cache: Path) -> Path:
    """The unpacked tree of Debian package ``name`` (see the module docstring)."""
    real, version = _resolve(name)
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    quoted = version.replace(":", "%3a") if version else None
    have = sorted(debs.glob(f"{real if version else name + '*'}_*.deb"))
    deb = next((d for d in have if quoted and d.name.startswith(f"{real}_{quoted}_")), None)
    if deb is None and version:
        with tempfile.TemporaryDirectory(dir=debs) as tmp:
            try:
                _run("apt-get", "download", "-q", f"{real}={version}", cwd=Path(tmp))
            except RescueBuildError:
                if not have:
                    raise
            else:
                got = next(Path(tmp).glob("*.deb"))
                got.rename(debs / got.name)
                deb = debs / got.name
    if deb is None:
        if not have:
            raise RescueBuildError(f"rescue build: Debian package {name} is unknown to apt and not cached: "
                                   "run `apt-get update` (Debian's main archive must be in the sources)")
        deb = have[-1]
    tree = cache / "trees" / deb.stem
    if not tree.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            _run("dpkg-deb", "-x", deb, Path(tmp) / "x")
            tree.parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / "x").rename(tree)
    return tree


def kernel(cache: Path) -> tuple[Path, Path, str]:
    """(vmlinuz, /lib/modules/VERSION directory, VERSION) of Debian's current signed kernel."""
    tree = package("linux-image-amd64", cache)
    mods = next((tree / "lib/modules").iterdir(), None) if (tree / "lib/modules").is_dir() else None
    if mods is None:
        mods = next((tree / "usr/lib/modules").iterdir())
    return tree / f"boot/vmlinuz-{mods.name}", mods, mods.name


def modules(moddir: Path, wanted: list[str], dest: Path) -> list[str]:
    """Copy ``wanted`` modules and their dependencies from ``moddir`` into ``dest`` as plain
    ``NAME.ko`` (xz/zstd-compressed ones unpacked) and return their names in load order.
    A wanted module that is not there is built into the kernel (or absent) and skipped."""
    kos: dict[str, Path] = {}
    for p in (moddir / "kernel").rglob("*.ko*"):
        kos[p.name.split(".ko")[0].replace("-", "_")] = p
    order: list[str] = []
    data: dict[str, bytes] = {}

    def load(name: str) -> bytes:
        if name not in data:
            p = kos[name]
            raw = p.read_bytes()
            if p.name.endswith(".xz"):
                raw = lzma.decompress(raw)
            elif p.name.endswith(".zst"):
                import zstandard

                raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
            data[name] = raw
        return data[name]

    def add(name: str) -> None:
        name = name.replace("-", "_")
        if name in order or name not in kos:
            return
        m = re.search(rb"depends=([^\0]*)", load(name))
        for d in (m.group(1).decode().split(",") if m else []):
            if d:
                add(d)
        order.append(name)

    for w in wanted:
        add(w)
    dest.mkdir(parents=True, exist_ok=True)
    for name in order:
        (dest / f"{name}.ko").write_bytes(load(name))
    return order


def require(*tools: tuple[str, str]) -> None:
    """Raise RescueBuildError for the first (program, package) not on PATH."""
    import os

    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    for program, pkg in tools:
        if not shutil.which(program, path=path):
            raise RescueBuildError(f"rescue build needs {program} (package {pkg}): install it")
