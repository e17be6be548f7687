"""Benchmark images built from real files on this machine (cached in the work directory).

- ``base.ext4``: ext4 (mke2fs -t ext4 -d) of real files from /usr, about half used, sparse.
- ``changed.ext4``: a copy of it changed in place with ``debugfs -w`` as a running system
  changes overnight: new files, deleted files, rewritten files (a few % of the blocks).
- ``ntfs.img``: NTFS (mkntfs + ntfscp) holding real files, when the tools work here.
- ``vm.img``: a large sparse VM-style disk: a few data regions (a copy of the NTFS image,
  real file contents) in a mostly unallocated raw image.
Raises CalledProcessError when a tool fails (the caller records why and goes on).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

ROOTS = ["/usr/lib", "/usr/share", "/usr/bin", "/usr/libexec", "/usr/include"]


def _sbin(name: str) -> str:
    for d in ("/usr/sbin/", "/sbin/", "/usr/bin/"):
        if os.path.exists(d + name):
            return d + name
    return shutil.which(name) or name


def real_files(budget: int, seed: int = 1) -> list[Path]:
    """Regular files from /usr (sorted walk), up to ``budget`` bytes in total."""
    out, total = [], 0
    for root in ROOTS:
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            for f in sorted(files):
                p = Path(dirpath) / f
                try:
                    if p.is_symlink() or not p.is_file():
                        continue
                    size = p.stat().st_size
                except OSError:
                    continue
                if not os.access(p, os.R_OK) or size > 64 << 20:
                    continue
                out.append(p)
                total += size
                if total >= budget:
                    return out
    return out


def _stage(files: list[Path], dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    for p in files:
        target = dest / p.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, target)
        except OSError:
            shutil.copy2(p, target)


def _debugfs(image: Path, script: str) -> None:
    subprocess.run([_sbin("debugfs"), "-w", "-f", "-", str(image)], input=script.encode(),
                   check=True, capture_output=True)


def build_ext4(work: Path, size: int, used: int) -> tuple[Path, Path, str]:
    """base.ext4 and changed.ext4; returns them and a one-line description of the change."""
    base, changed = work / "base.ext4", work / "changed.ext4"
    stamp = work / f"ext4-{size}-{used}.done"
    files = real_files(used)
    if not stamp.exists():
        stage = work / "stage"
        _stage(files, stage)
        base.unlink(missing_ok=True)
        subprocess.run(["truncate", "-s", str(size), str(base)], check=True)
        subprocess.run([_sbin("mke2fs"), "-q", "-F", "-t", "ext4", "-E", "root_owner=0:0",
                        "-d", str(stage), str(base)], check=True, capture_output=True)
        shutil.rmtree(stage)
    rng = random.Random(7)
    rel = [p.relative_to("/") for p in files]
    big = [r for r, p in zip(rel, files) if p.stat().st_size >= 64 << 10]
    delete = rng.sample(big, max(1, len(big) // 100))          # ~1% of larger files deleted
    rewrite = rng.sample([r for r in big if r not in delete], max(1, len(big) // 100))
    new_src = real_files(used + used // 50)[len(files):]         # ~2% new files (next in walk)
    desc = ""
    if not stamp.exists():
        tmp = work / "rewrite"
        tmp.mkdir(exist_ok=True)
        cmds = []
        for r in delete:
            cmds.append(f'rm "/{r}"')
        for i, r in enumerate(rewrite):   # an update: same file, some 4 KiB pages changed
            data = bytearray((Path("/") / r).read_bytes())
            for _ in range(max(1, len(data) // (64 << 10))):
                pos = rng.randrange(0, len(data))
                data[pos : pos + 64] = hashlib.sha256(bytes(data[pos : pos + 64])).digest() * 2
            (tmp / f"r{i}").write_bytes(data)
            cmds += [f'rm "/{r}"', f'write {tmp / f"r{i}"} "/{r}"']
        cmds.append("mkdir /var-new")
        for i, p in enumerate(new_src):
            cmds.append(f'write {p} "/var-new/n{i}-{p.name}"')
        shutil.copyfile(base, changed) if False else subprocess.run(
            ["cp", "--sparse=always", str(base), str(changed)], check=True)
        _debugfs(changed, "\n".join(cmds) + "\n")
        shutil.rmtree(tmp)
        stamp.write_text("ok\n")
    nbytes = sum((Path("/") / r).stat().st_size for r in delete + rewrite) + sum(p.stat().st_size for p in new_src)
    desc = (f"{len(delete)} files deleted, {len(rewrite)} files rewritten (a few 64-byte edits each), "
            f"{len(new_src)} new files; {nbytes / 1e6:.0f} MB of files touched")
    return base, changed, desc


def build_ntfs(work: Path, size: int, used: int) -> Path:
    img = work / "ntfs.img"
    stamp = work / f"ntfs-{size}-{used}.done"
    if stamp.exists():
        return img
    img.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", str(size), str(img)], check=True)
    subprocess.run([_sbin("mkntfs"), "-F", "-Q", "-q", str(img)], check=True, capture_output=True)
    files = [p for p in real_files(4 * used) if p.stat().st_size >= 1 << 20]
    total = 0
    for i, p in enumerate(files):
        subprocess.run([_sbin("ntfscp"), "-f", str(img), str(p), f"f{i}-{p.name}"], check=True, capture_output=True)
        total += p.stat().st_size
        if total >= used:
            break
    stamp.write_text("ok\n")
    return img


def build_vm(work: Path, size: int, ntfs: Path | None, name: str = "vm.img") -> Path:
    """A sparse raw disk: the NTFS image at 1 MiB, real file data at 40% and 75% of it."""
    img = work / name
    stamp = work / f"{name}-{size}.done"
    if stamp.exists():
        return img
    img.unlink(missing_ok=True)
    with open(img, "wb") as out:
        out.truncate(size)
        if ntfs is not None:
            out.seek(1 << 20)
            with open(ntfs, "rb") as f:
                shutil.copyfileobj(f, out, 8 << 20)
        for frac, budget in ((0.40, 128 << 20), (0.75, 64 << 20)):
            out.seek(int(size * frac) & ~0xFFFFF)
            for p in real_files(budget, seed=2)[-400:]:
                out.write(p.read_bytes())
    subprocess.run(["fallocate", "--dig-holes", str(img)], check=False)
    stamp.write_text("ok\n")
    return img
