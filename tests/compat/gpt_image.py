"""A real GPT disk image: sgdisk table, an ext4 file system (mke2fs -d) in partition 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import make_ext4, make_tree, tool

MiB = 1 << 20


def make_gpt_disk(tmp: Path, size_mb: int = 40) -> tuple[Path, Path, int, int]:
    """Returns (disk image, content folder, partition 2 offset, partition 2 length)."""
    disk = tmp / "gpt.img"
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(disk)], check=True)
    subprocess.run([tool("sgdisk"), "-n", "1:2048:+4M", "-t", "1:EF00", "-c", "1:EFI system partition",
                    "-n", "2:0:+24M", "-t", "2:8300", "-c", "2:root",
                    "-n", "3:0:0", "-t", "3:0700", "-c", "3:data", str(disk)], check=True, capture_output=True)
    start = 2048 + 4 * 2048  # sgdisk aligns partition 2 right after partition 1
    length = 24 * MiB
    content = make_tree(tmp / "content", files=20, size=96 << 10, seed=5)
    (content / "hello.txt").write_text("diskvault mount test\n")
    fs = make_ext4(tmp / "root.ext4", 24, content)
    subprocess.run(["dd", f"if={fs}", f"of={disk}", "bs=1M", f"seek={start * 512 // MiB}", "conv=notrunc,sparse"],
                   check=True, capture_output=True)
    fs.unlink()
    return disk, content, start * 512, length
