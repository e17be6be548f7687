"""Copy about N MiB of real files from this machine (/usr) into a folder, for sample images.

Usage: copy_real_files.py DEST MIB
"""

import os
import shutil
import sys


def main() -> None:
    dest, limit = sys.argv[1], int(sys.argv[2]) << 20
    total = 0
    for top in ("/usr/lib", "/usr/bin", "/usr/share"):
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                d = os.path.join(dest, p.lstrip("/"))
                os.makedirs(os.path.dirname(d), exist_ok=True)
                try:
                    shutil.copyfile(p, d)
                except OSError:
                    continue
                total += os.path.getsize(p)
                if total >= limit:
                    print(f"   copied {total >> 20} MiB of real files from /usr")
                    return
    print(f"   copied {total >> 20} MiB of real files from /usr")


if __name__ == "__main__":
    main()
