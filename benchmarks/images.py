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
import json
import os
import random
import shutil
import subprocess
import time
import zlib
from dataclasses import dataclass, field
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


# --- the widened set (issue 18): more filesystems, fuller, deleted files, a GPT disk ----------
# Every image is built from real files (a walk of /usr, each image from its own part of it)
# and has a changed copy for the incremental, changed in place by the filesystem's own tools:
# debugfs -w (ext4), ntfs-3g (NTFS, a FUSE mount), mtools (FAT32), the kernel (XFS and Btrfs,
# a loop mount). "Deleted" images are filled, then files holding 40% of the bytes are deleted: the
# blocks keep the old bytes, as on a used disk. Sizes scale with ``scale`` (1.0: 1-3.3 GiB images).

MiB = 1 << 20
GiB = 1 << 30
_WALK: list[tuple[Path, int]] = []


@dataclass
class Pair:
    """One benchmark image and its changed copy (None: no incremental)."""

    name: str
    base: Path
    changed: Path | None
    desc: str  # how it was built
    change: str = ""  # what the changed copy changed
    meta: dict = field(default_factory=dict)


def _walk() -> list[tuple[Path, int]]:
    if not _WALK:
        for p in real_files(1 << 62):
            try:
                _WALK.append((p, p.stat().st_size))
            except OSError:
                pass
    return _WALK


def pick(budget: int, skip: int = 0, min_size: int = 0) -> list[Path]:
    """Files of the /usr walk (each at least ``min_size``) after its first ``skip`` bytes,
    up to ``budget`` bytes of 4 KiB blocks; wraps around when /usr holds less."""
    walk = [(p, n) for p, n in _walk() if n >= min_size]
    total = sum(n for _, n in walk) or 1
    out, got, pos, i = [], 0, 0, 0
    while pos < skip % total:
        pos += walk[i][1]
        i += 1
    seen = 0
    while got < budget and seen < len(walk):
        p, n = walk[i % len(walk)]
        out.append(p)
        got += -(-n // 4096) * 4096
        i += 1
        seen += 1
    return out


def _flat_stage(files: list[Path], dest: Path, per_dir: int = 500) -> list[Path]:
    """Hard links to ``files`` under short unique names (d<k>/<i>-<name>): names any
    filesystem takes (FAT: no case clashes). Returns the staged paths."""
    if dest.exists():
        shutil.rmtree(dest)
    out = []
    for i, p in enumerate(files):
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in p.name)[:40]
        target = dest / f"d{i // per_dir}" / f"{i}-{safe}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, target)
        except OSError:
            shutil.copy2(p, target)
        out.append(target)
    return out


class _Mounted:
    """A filesystem image mounted on a fresh directory: ntfs-3g (FUSE, kept in the foreground
    so that leaving waits until it has written everything and exited) or a loop mount."""

    def __init__(self, image: Path, kind: str, work: Path) -> None:
        self.image, self.kind = image, kind
        self.dir = work / f"mnt-{os.getpid()}-{image.name}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.kind != "ntfs":
            subprocess.run(["mount", "-o", "loop", "-t", self.kind, str(self.image), str(self.dir)], check=True,
                           capture_output=True)
            return self.dir
        self.proc = subprocess.Popen(["ntfs-3g", "-o", "no_detach", str(self.image), str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.ismount(self.dir):
                return self.dir
            if self.proc.poll() is not None:
                raise subprocess.CalledProcessError(self.proc.returncode, "ntfs-3g")
            time.sleep(0.05)
        raise OSError(f"ntfs-3g did not mount {self.image}")

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", str(self.dir)], check=True, capture_output=True)
        if self.proc is not None and self.proc.wait(timeout=120):
            raise subprocess.CalledProcessError(self.proc.returncode, "ntfs-3g")
        self.dir.rmdir()


def _edit(data: bytearray, rng: random.Random) -> bytearray:
    """An update: a few 64-byte edits, one per 64 KiB."""
    for _ in range(max(1, len(data) // (64 << 10))):
        pos = rng.randrange(0, max(1, len(data)))
        data[pos : pos + 64] = hashlib.sha256(bytes(data[pos : pos + 64])).digest() * 2
    return data


def _plan(files: list[Path], rng: random.Random) -> tuple[list[int], list[int]]:
    """Indexes of the files a night deletes (~1% of the larger ones) and rewrites (~1%)."""
    big = [i for i, p in enumerate(files) if p.stat().st_size >= 64 << 10] or list(range(len(files)))
    delete = rng.sample(big, max(1, len(big) // 100))
    rest = [i for i in big if i not in set(delete)]
    rewrite = rng.sample(rest, max(1, min(len(rest), len(big) // 100)))
    return delete, rewrite


def _change_mounted(root: Path, rng: random.Random, new: list[Path]) -> str:
    """A night's change on a mounted tree: delete and rewrite (in place) ~1% each of the
    larger files, add ``new`` files."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    delete, rewrite = _plan(files, rng)
    touched = 0
    for i in delete:
        touched += files[i].stat().st_size
        files[i].unlink()
    for i in rewrite:
        data = _edit(bytearray(files[i].read_bytes()), rng)
        with open(files[i], "r+b") as f:  # in place: the filesystem keeps the file's blocks
            f.write(data)
        touched += len(data)
    (root / "new").mkdir(exist_ok=True)
    for i, p in enumerate(new):
        shutil.copyfile(p, root / "new" / f"n{i}")
        touched += p.stat().st_size
    return (f"{len(delete)} files deleted, {len(rewrite)} rewritten in place, {len(new)} new; "
            f"{touched / 1e6:.0f} MB of files touched")


def _doomed(sizes: list[int], frac: float, rng: random.Random) -> list[int]:
    """Indexes of random files holding ``frac`` of the bytes (deleting 40% of the files by
    count would mostly delete small ones and leave little old data behind)."""
    order = list(range(len(sizes)))
    rng.shuffle(order)
    out, got, want = [], 0, frac * sum(sizes)
    for i in order:
        if got + sizes[i] <= want:  # a file that would overshoot is kept
            out.append(i)
            got += sizes[i]
    return out


def _delete_mounted(root: Path, frac: float, rng: random.Random) -> int:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    sizes = [p.stat().st_size for p in files]
    gone = _doomed(sizes, frac, rng)
    for i in gone:
        files[i].unlink()
    return sum(sizes[i] for i in gone)


def _blank(path: Path, size: int, allocated: bool) -> None:
    """A new image of ``size`` bytes: sparse, or every block written with zeros."""
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if allocated:
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=8M", f"count={size // (8 << 20)}", "status=none"],
                       check=True)
    with open(path, "ab") as f:
        f.truncate(size)


def _done(stamp: Path) -> bool:
    return stamp.exists()


def _used(image: Path, kind: str, work: Path) -> str:
    if kind == "fat32":
        return ""
    with _Mounted(image, kind, work) as root:
        st = os.statvfs(root)
    return f"{(st.f_blocks - st.f_bfree) * st.f_frsize / 1e6:.0f} MB used of {st.f_blocks * st.f_frsize / 1e6:.0f} MB"


def mounted_fs(work: Path, name: str, kind: str, size: int, frac: float, skip: int, delete: float = 0.0,
               allocated: bool = False) -> Pair:
    """An NTFS (ntfs-3g), XFS or Btrfs (loop mount) image filled to ``frac`` of its free space with
    real files, ``delete`` of them deleted again, and its changed copy."""
    base, changed = work / f"{name}.img", work / f"{name}-changed.img"
    stamp = work / f"{name}-{size}-{frac}-{skip}-{delete}-{allocated}.done"
    rng = random.Random(zlib.crc32(name.encode()))
    if not _done(stamp):
        _blank(base, size, allocated)
        if kind == "ntfs":
            subprocess.run([_sbin("mkntfs"), "-F", "-Q", "-q", str(base)], check=True, capture_output=True)
        else:
            subprocess.run([_sbin(f"mkfs.{kind}"), "-q", "-f", str(base)], check=True, capture_output=True)
        stage = work / f"stage-{name}"
        with _Mounted(base, kind, work) as root:
            st = os.statvfs(root)
            fill = int(st.f_bavail * st.f_frsize * frac)
            _flat_stage(pick(fill, skip), stage)
            subprocess.run(["cp", "-r", f"{stage}/.", str(root)], check=True, capture_output=True)
            deleted = _delete_mounted(root, delete, rng) if delete else 0
        shutil.rmtree(stage)
        subprocess.run(["cp", f"--sparse={'never' if allocated else 'always'}", str(base), str(changed)], check=True)
        with _Mounted(changed, kind, work) as root:
            change = _change_mounted(root, rng, pick(fill // 50, skip + fill))
        stamp.write_text(json.dumps(dict(change=change, deleted=deleted, fill=fill)) + "\n")
    info = json.loads(stamp.read_text())
    desc = (f"{ {'ntfs': 'NTFS', 'xfs': 'XFS', 'btrfs': 'Btrfs'}[kind]}, {size / GiB:.2f} GiB"
            f"{', fully allocated (free space is zeros)' if allocated else ''}, {info['fill'] / 1e6:.0f} MB of files "
            "copied in" + (f", then files holding {delete:.0%} of that deleted ({info['deleted'] / 1e6:.0f} MB; their blocks "
                           "keep the old bytes)" if delete else ""))
    return Pair(name, base, changed, desc, info["change"])


def ext4_fs(work: Path, name: str, size: int, fill: int, skip: int, delete: float = 0.0) -> Pair:
    """ext4 (mke2fs -d) of real files, ``delete`` of them removed with debugfs, and a copy
    changed in place by debugfs -w."""
    base, changed = work / f"{name}.img", work / f"{name}-changed.img"
    stamp = work / f"{name}-{size}-{fill}-{skip}-{delete}.done"
    rng = random.Random(zlib.crc32(name.encode()))
    if not _done(stamp):
        stage = work / f"stage-{name}"
        staged = _flat_stage(pick(fill, skip), stage)
        _blank(base, size, False)
        subprocess.run([_sbin("mke2fs"), "-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d", str(stage), str(base)],
                       check=True, capture_output=True)
        rel = ["/" + str(p.relative_to(stage)) for p in staged]
        gone = _doomed([p.stat().st_size for p in staged], delete, rng) if delete else []
        if gone:
            _debugfs(base, "".join(f'rm "{rel[i]}"\n' for i in gone))
        deleted = sum(staged[i].stat().st_size for i in gone)
        left = sorted(set(range(len(rel))) - set(gone))
        kept = [staged[i] for i in left]
        drop, rewrite = _plan(kept, rng)
        tmp = work / f"rewrite-{name}"
        tmp.mkdir(exist_ok=True)
        cmds = [f'rm "{rel[left[i]]}"' for i in drop]
        for k, i in enumerate(rewrite):
            (tmp / f"r{k}").write_bytes(_edit(bytearray(kept[i].read_bytes()), rng))
            cmds += [f'rm "{rel[left[i]]}"', f'write {tmp / f"r{k}"} "{rel[left[i]]}"']
        new = pick(fill // 50, skip + fill)
        cmds.append("mkdir /new")
        cmds += [f'write {p} "/new/n{i}"' for i, p in enumerate(new)]
        subprocess.run(["cp", "--sparse=always", str(base), str(changed)], check=True)
        _debugfs(changed, "\n".join(cmds) + "\n")
        touched = sum(kept[i].stat().st_size for i in drop + rewrite) + sum(p.stat().st_size for p in new)
        shutil.rmtree(tmp)
        shutil.rmtree(stage)
        change = (f"{len(drop)} files deleted, {len(rewrite)} rewritten, {len(new)} new (debugfs -w); "
                  f"{touched / 1e6:.0f} MB of files touched")
        stamp.write_text(json.dumps(dict(change=change, deleted=deleted)) + "\n")
    info = json.loads(stamp.read_text())
    desc = (f"ext4, {size / GiB:.2f} GiB, {fill / 1e6:.0f} MB of files"
            + (f", then files holding {delete:.0%} of that deleted with debugfs ({info['deleted'] / 1e6:.0f} MB; their blocks "
               "keep the old bytes)" if delete else ""))
    return Pair(name, base, changed, desc, info["change"])


def fat32_fs(work: Path, name: str, size: int, fill: int, skip: int) -> Pair:
    """FAT32 (mkfs.vfat -F 32) filled with mtools, and a copy changed with mdel/mcopy."""
    base, changed = work / f"{name}.img", work / f"{name}-changed.img"
    stamp = work / f"{name}-{size}-{fill}-{skip}.done"
    rng = random.Random(zlib.crc32(name.encode()))
    if not _done(stamp):
        stage = work / f"stage-{name}"
        staged = _flat_stage(pick(fill, skip), stage)
        _blank(base, size, False)
        subprocess.run([_sbin("mkfs.vfat"), "-F", "32", str(base)], check=True, capture_output=True)
        subprocess.run(["mcopy", "-s", "-Q", "-i", str(base), *map(str, sorted(stage.iterdir())), "::"],
                       check=True, capture_output=True)
        subprocess.run(["cp", "--sparse=always", str(base), str(changed)], check=True)
        rel = [str(p.relative_to(stage)) for p in staged]
        drop, rewrite = _plan(staged, rng)
        mi = ["-i", str(changed)]
        subprocess.run(["mdel", *mi, *[f"::{rel[i]}" for i in drop]], check=True, capture_output=True)
        tmp = work / f"rewrite-{name}"
        tmp.mkdir(exist_ok=True)
        for i in rewrite:
            (tmp / staged[i].name).write_bytes(_edit(bytearray(staged[i].read_bytes()), rng))
            subprocess.run(["mcopy", "-o", *mi, str(tmp / staged[i].name), f"::{rel[i]}"], check=True, capture_output=True)
        new = pick(fill // 50, skip + fill)
        subprocess.run(["mmd", *mi, "::new"], check=True, capture_output=True)
        for i, p in enumerate(new):
            subprocess.run(["mcopy", *mi, str(p), f"::new/n{i}"], check=True, capture_output=True)
        touched = sum(staged[i].stat().st_size for i in drop + rewrite) + sum(p.stat().st_size for p in new)
        shutil.rmtree(tmp)
        shutil.rmtree(stage)
        change = (f"{len(drop)} files deleted, {len(rewrite)} rewritten, {len(new)} new (mtools); "
                  f"{touched / 1e6:.0f} MB of files touched")
        stamp.write_text(json.dumps(dict(change=change)) + "\n")
    info = json.loads(stamp.read_text())
    return Pair(name, base, changed, f"FAT32, {size / GiB:.2f} GiB, {fill / 1e6:.0f} MB of files", info["change"])


def gpt_disk(work: Path, name: str, parts: list[tuple[str, Pair]]) -> Pair:
    """A GPT disk holding the given partition images (type code, pair), 1 MiB apart, and
    the same disk holding their changed copies (the partition table and gaps identical)."""
    base, changed = work / f"{name}.img", work / f"{name}-changed.img"
    stamp = work / f"{name}-{'-'.join(p.name for _, p in parts)}.done"
    sizes = [p.base.stat().st_size for _, p in parts]
    if not _done(stamp):
        size = MiB + sum(s + MiB for s in sizes) + MiB
        for img, which in ((base, "base"), (changed, "changed")):
            _blank(img, size, False)
            argv = [_sbin("sgdisk"), "-o"]
            start = MiB
            for i, ((code, _), s) in enumerate(zip(parts, sizes), 1):
                argv += ["-n", f"{i}:{start // 512}:{(start + s) // 512 - 1}", "-t", f"{i}:{code}"]
                start += s + MiB
            subprocess.run([*argv, str(img)], check=True, capture_output=True)
            start = MiB
            for (_, p), s in zip(parts, sizes):
                src = p.base if which == "base" or p.changed is None else p.changed
                subprocess.run(["dd", f"if={src}", f"of={img}", "bs=8M", "conv=notrunc,sparse", "oflag=seek_bytes",
                                f"seek={start}", "status=none"], check=True)
                start += s + MiB
        stamp.write_text("ok\n")
    desc = "GPT disk: " + " + ".join(f"{p.name} ({s / GiB:.2f} GiB)" for (_, p), s in zip(parts, sizes))
    change = "each partition replaced by its changed copy: " + "; ".join(f"{p.name}: {p.change}" for _, p in parts)
    return Pair(name, base, changed, desc, change)


def widened(work: Path, scale: float = 1.0) -> list[Pair]:
    """The widened benchmark set at ``scale`` (1.0: 1-3.3 GiB images; the default run uses 0.25).
    Raises CalledProcessError when a tool fails."""
    work.mkdir(parents=True, exist_ok=True)

    def sz(gib: float) -> int:
        return max(64 * MiB, int(gib * scale * GiB) // MiB * MiB)

    out = [
        ext4_fs(work, "ext4-deleted", sz(2), int(sz(2) * 0.8), 0, delete=0.4),
        mounted_fs(work, "ntfs-full", "ntfs", sz(2), 0.6, 1 << 30, allocated=True),
        mounted_fs(work, "ntfs-deleted", "ntfs", sz(2), 0.8, 2 << 30, delete=0.4, allocated=True),
        fat32_fs(work, "fat32", sz(1), int(sz(1) * 0.5), 3 << 30),
        mounted_fs(work, "xfs", "xfs", max(sz(2), 320 * MiB), 0.9, 512 << 20),
        mounted_fs(work, "btrfs-deleted", "btrfs", max(sz(2), 320 * MiB), 0.8, 3584 << 20, delete=0.4),
    ]
    efi = fat32_fs(work, "gpt-efi", sz(0.25), int(sz(0.25) * 0.3), 4 << 30)
    win = mounted_fs(work, "gpt-ntfs", "ntfs", sz(1.5), 0.7, 1536 << 20, delete=0.4)
    lin = ext4_fs(work, "gpt-ext4", sz(1.5), int(sz(1.5) * 0.5), 2560 << 20)
    out.append(gpt_disk(work, "gpt-disk", [("ef00", efi), ("0700", win), ("8300", lin)]))
    return out
