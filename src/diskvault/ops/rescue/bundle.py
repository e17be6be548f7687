"""The self-contained diskvault of the rescue system: the running Python, copied.

``make_bundle(dest)`` writes a relocatable tree that runs diskvault on a machine with no
Python at all (docs/rescue.md, "The diskvault executable"):

- ``bin/python3``: the interpreter that runs this build (a venv's base interpreter);
- ``lib/``: every shared library it and its extension modules load (``ldd``), the dynamic
  loader included, so not even the target's C library is used;
- ``lib/python3.X/``: the standard library (without tests, IDLE, tkinter, ensurepip),
  byte-compiled, and ``site-packages`` with diskvault (the code that runs this build) and
  every installed distribution it requires (blake3, lz4, zstandard, pyfastcdc, typer, rich,
  ..., and cryptography / argon2-cffi when installed);
- ``bin/diskvault``: a ``sh`` launcher that starts the interpreter through the bundled
  loader with PYTHONHOME set to the tree.

``copy_elf(path, root)`` copies a host program and its shared libraries under ``root`` at
the same paths (the rescue system's own tools). Both raise ``RescueBuildError`` naming what
is missing.
"""

from __future__ import annotations

import compileall
import importlib.metadata as md
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from ...errors import RescueBuildError

#: distributions included when installed even if diskvault does not (yet) require them
OPTIONAL = ("cryptography", "argon2-cffi")
#: standard-library parts a rescue system never uses (tests, GUIs, build helpers)
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "site-packages", "distutils", "venv", "__pycache__", "unittest", "turtle.py"}
STDLIB_SKIP_PREFIX = ("config-", "_tkinter", "_test", "xxlimited", "_xxtest", "_ctypes_test")
#: requirements of requirements a rescue system never runs (packaging tools)
DIST_SKIP = {"pip", "setuptools", "wheel"}
LAUNCHER = """#!/bin/sh
# diskvault, self-contained: this tree's Python, started by this tree's dynamic loader.
here=$(dirname "$(readlink -f "$0")")/..
PYTHONHOME=$here PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH= \\
  exec "$here/lib/@LOADER@" --library-path "$here/lib" "$here/bin/python3" \\
  -c 'import sys; sys.argv[0] = "diskvault"; from diskvault.cli import main; main()' "$@"
"""


def _libraries(binaries: list[Path]) -> set[Path]:
    """The shared libraries ``binaries`` load (ldd), the dynamic loader included."""
    if not shutil.which("ldd"):
        raise RescueBuildError("rescue build needs ldd (package libc-bin): install it")
    libs: set[Path] = set()
    for b in binaries:
        out = subprocess.run(["ldd", str(b)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.add(Path(m.group(1)))
            elif "not found" in line:
                raise RescueBuildError(f"rescue build: {b} needs {line.split()[0]}, which is not installed: install it")
    return libs


def _loader(libs: set[Path]) -> Path:
    return next(p for p in libs if p.name.startswith("ld-linux"))


def copy_elf(program: str, root: Path, package: str) -> Path:
    """Copy the host program ``program`` (found on PATH or in /usr/sbin, /sbin) to
    ``root/usr/sbin`` and its shared libraries into ``root`` at their host paths; returns the
    program's path inside ``root``.

    Raises RescueBuildError("rescue build needs PROGRAM (package PACKAGE): install it")."""
    found = shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if not found:
        raise RescueBuildError(f"rescue build needs {program} (package {package}): install it")
    real = Path(found).resolve()
    for src in _libraries([real]):
        dst = root / src.relative_to("/")
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src.resolve(), dst)
    dst = root / "usr/sbin" / program
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(real, dst)
    return dst


def _distributions() -> list[md.Distribution]:
    """diskvault's installed requirements, recursively (extras and absent ones skipped)."""
    todo = [r for r in _requires("diskvault")] + list(OPTIONAL)
    seen: dict[str, md.Distribution] = {}
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen or name in DIST_SKIP:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist
        todo += _requires(name)
    return list(seen.values())


def _requires(name: str) -> list[str]:
    try:
        reqs = md.requires(name) or []
    except md.PackageNotFoundError:
        return []
    return [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in reqs if "extra ==" not in r]


def make_bundle(dest: Path) -> dict:
    """Write the self-contained diskvault tree to ``dest`` (which must not exist); returns
    ``{"python": "3.11.7", "distributions": [names], "bytes": size of the tree}``."""
    import diskvault

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lib = dest / "lib"
    pylib = lib / version
    site = pylib / "site-packages"
    site.mkdir(parents=True)
    (dest / "bin").mkdir()
    shutil.copy2(python, dest / "bin/python3")
    shutil.copytree(stdlib, pylib, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n in STDLIB_SKIP or n.startswith(STDLIB_SKIP_PREFIX)])
    shutil.copytree(Path(diskvault.__file__).parent, site / "diskvault",
                    ignore=shutil.ignore_patterns("__pycache__"))
    names = []
    for dist in _distributions():
        names.append(dist.metadata["Name"])
        for f in dist.files or []:
            src = Path(dist.locate_file(f)).resolve()
            rel = Path(f)
            if rel.parts[0] == ".." or "__pycache__" in rel.parts or not src.is_file():
                continue  # scripts in bin/, stale byte code
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, site / rel)
    binaries = [dest / "bin/python3", *dest.rglob("*.so"), *dest.rglob("*.so.*")]
    libs = _libraries(binaries)
    for src in libs:
        if not (lib / src.name).exists():
            shutil.copy2(src.resolve(), lib / src.name)
    if shutil.which("strip"):  # debug symbols: libpython alone shrinks from 23 to 4 MiB
        subprocess.run(["strip", "--strip-unneeded", *map(str, [dest / "bin/python3", *(p for p in lib.glob("*.so*") if not p.name.startswith("ld-")),
                                                                 *pylib.rglob("*.so"), *pylib.rglob("*.so.*")])],
                       capture_output=True)
    # unchecked-hash byte code: valid whatever the sources' times (the initramfs has none); a
    # recompile of every module at each start costs 15 s in a TCG virtual machine
    compileall.compile_dir(str(pylib), quiet=2, workers=1, optimize=0,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    launcher = dest / "bin/diskvault"
    launcher.write_text(LAUNCHER.replace("@LOADER@", _loader(libs).name))
    launcher.chmod(0o755)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
    return {"python": sys.version.split()[0], "distributions": sorted(names), "bytes": size}
