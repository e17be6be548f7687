"""FAT12/16/32 cluster allocation from the FAT, and exFAT's from its allocation bitmap.

FAT: a cluster is free when its FAT entry is 0. Checked before use (Inconsistent
otherwise): the geometry fits the partition, every entry is free, end-of-chain, bad, or a
cluster that exists, and the copies of the FAT agree (the active one when FAT32 mirroring is
off). exFAT: the allocation bitmap named by the root directory, which must cover every
cluster and mark the bitmap's own, the up-case table's and the root directory's clusters used.
Everything before the data area (boot sectors, FATs, a FAT12/16 root directory) is kept.
"""

from __future__ import annotations

import re
import struct
import sys
from array import array

from .common import FsMap, Inconsistent, Reader, free_ranges
from .ranges import overlapping


def probe_fat(boot: bytes) -> bool:
    if boot[510:512] != b"\x55\xaa" or boot[0] not in (0xEB, 0xE9):
        return False
    bps, spc, reserved, fats = struct.unpack_from("<HBHB", boot, 0x0B)
    return bps in (512, 1024, 2048, 4096) and spc and not spc & (spc - 1) and reserved and fats in (1, 2, 3, 4)


def probe_exfat(boot: bytes) -> bool:
    return boot[3:11] == b"EXFAT   "


def read_fat(read: Reader, size: int) -> FsMap:
    boot = read(0, 512)
    bps, spc, reserved, nfats, root_entries, total16, _media, fat16 = struct.unpack_from("<HBHBHHBH", boot, 0x0B)
    total = total16 or struct.unpack_from("<I", boot, 0x20)[0]
    fat_sectors = fat16 or struct.unpack_from("<I", boot, 0x24)[0]
    root_sectors = (root_entries * 32 + bps - 1) // bps
    data_start = reserved + nfats * fat_sectors + root_sectors
    if not fat_sectors or total * bps > size or data_start >= total:
        raise Inconsistent(f"impossible geometry ({total} sectors of {bps} B, data from sector {data_start}) "
                           f"for {size} bytes")
    count = (total - data_start) // spc
    kind = "fat12" if count < 4085 else "fat16" if count < 65525 else "fat32"
    cluster = bps * spc
    fs = FsMap(kind, cluster)
    bits = {"fat12": 12, "fat16": 16, "fat32": 32}[kind]
    need = ((count + 2) * bits + 7) // 8
    if need > fat_sectors * bps:
        raise Inconsistent(f"the FAT ({fat_sectors * bps} bytes) is too small for {count} clusters")
    copies = list(range(nfats))
    if kind == "fat32":
        ext_flags = struct.unpack_from("<H", boot, 0x28)[0]
        if ext_flags & 0x80:  # mirroring off: only the active FAT counts
            copies = [ext_flags & 0xF]
            if copies[0] >= nfats:
                raise Inconsistent(f"active FAT {copies[0]} of {nfats}")
    fats = [read((reserved + i * fat_sectors) * bps, need) for i in copies]
    if any(f != fats[0] for f in fats[1:]):
        raise Inconsistent("the copies of the FAT differ")
    table = fats[0]
    base = data_start * bps
    if bits == 12:
        runs, nfree = _scan_fat12(table, count)
    else:
        runs, nfree = _scan(table, bits // 8, count)
    fs.free = [(base + (s - 2) * cluster, base + (e - 2) * cluster) for s, e in runs]
    if kind == "fat32":
        info_sector = struct.unpack_from("<H", boot, 0x30)[0]
        if 0 < info_sector < reserved:
            info = read(info_sector * bps, 512)
            known = struct.unpack_from("<I", info, 0x1E8)[0]
            if info[:4] == b"RRaA" and known != 0xFFFFFFFF and abs(known - nfree) > max(count // 100, 64):
                raise Inconsistent(f"the FAT has {nfree} free clusters, the FSInfo sector says {known}")
    return fs


_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))  # FAT32 entries: the top 4 bits are reserved
_FREE = {2: re.compile(rb"\x00{2,}"), 4: re.compile(rb"\x00{4,}")}
_SPECIAL32 = re.compile(rb"[\xf7-\xff]\xff\xff\x0f")  # bad cluster, end of chain (entries masked)


def _scan(table: bytes, width: int, count: int) -> tuple[list[tuple[int, int]], int]:
    """The runs ``(first, end)`` of free clusters among a FAT16 (``width`` 2) or FAT32 (4)
    table's entries 2..count+1, and how many are free; raises Inconsistent when an entry
    points to a cluster that does not exist. The work is done by the regular-expression
    engine and ``array`` (a FAT32 of 2 million clusters in a few tens of ms), not entry by
    entry: free entries are the aligned all-zero ones; after end-of-chain and bad-cluster
    values are zeroed, the largest entry must be a cluster that exists and none may be 1."""
    data = table[2 * width:(count + 2) * width]
    if width == 4:
        masked = bytearray(data)
        masked[3::4] = data[3::4].translate(_LOW_NIBBLE)
        data = bytes(masked)
    runs, nfree = [], 0
    for m in _FREE[width].finditer(data):
        s, e = -(-m.start() // width), m.end() // width  # whole entries inside the zero run
        if s < e:
            runs.append((s + 2, e + 2))
            nfree += e - s
    if width == 4:
        # in masked entries a special value's last byte is 0x0F and no other entry's
        # fourth byte can be 0xFF, so every match is one whole entry
        entries = array("I", _SPECIAL32.sub(b"\x00\x00\x00\x00", data))
    else:
        entries = array("H", data)
        entries = array("H", (0 if e >= 0xFFF7 else e for e in entries))
    if sys.byteorder == "big":
        entries.byteswap()
    if entries and (max(entries) >= count + 2 or entries.count(1)):
        n, e = next((n, e) for n, e in enumerate(entries, 2) if e == 1 or e >= count + 2)
        raise Inconsistent(f"FAT entry {n} points to cluster {e}, which does not exist")
    return runs, nfree


def _scan_fat12(table: bytes, count: int) -> tuple[list[tuple[int, int]], int]:
    """``_scan`` for a FAT12 table (at most 4,084 clusters: entry by entry)."""
    runs: list[tuple[int, int]] = []
    nfree = 0
    for n in range(2, count + 2):
        e = (struct.unpack_from("<H", table, n * 3 // 2)[0] >> (4 if n & 1 else 0)) & 0xFFF
        if e == 0:
            nfree += 1
            if runs and runs[-1][1] == n:
                runs[-1] = (runs[-1][0], n + 1)
            else:
                runs.append((n, n + 1))
        elif e < 0xFF7 and not 2 <= e < count + 2:
            raise Inconsistent(f"FAT entry {n} points to cluster {e}, which does not exist")
    return runs, nfree


def read_exfat(read: Reader, size: int) -> FsMap:
    boot = read(0, 512)
    vol_len, fat_off, fat_len, heap, count, root = struct.unpack_from("<QIIIII", boot, 0x48)
    bps, spc = 1 << boot[0x6C], 1 << boot[0x6D]
    cluster = bps * spc
    if not 9 <= boot[0x6C] <= 12 or boot[0x6C] + boot[0x6D] > 25 or vol_len * bps > size \
            or heap * bps + count * cluster > vol_len * bps or not 2 <= root < count + 2:
        raise Inconsistent("impossible geometry")
    fs = FsMap("exfat", cluster)
    fat = read(fat_off * bps, (count + 2) * 4)

    def chain(first: int) -> list[int]:
        out, n = [], first
        while 2 <= n < count + 2 and len(out) <= count:
            out.append(n)
            n = struct.unpack_from("<I", fat, n * 4)[0]
        return out

    def at(n: int) -> int:
        return heap * bps + (n - 2) * cluster

    bitmap_first = bitmap_len = None
    used_by_meta: list[tuple[int, int]] = []
    root_clusters = chain(root)
    for n in root_clusters:
        used_by_meta.append((n, 1))
        d = read(at(n), cluster)
        for off in range(0, cluster, 32):
            etype = d[off]
            if etype == 0x81 and bitmap_first is None and not d[off + 1] & 1:
                bitmap_first, bitmap_len = struct.unpack_from("<IQ", d, off + 20)
            elif etype == 0x82:
                first, length = struct.unpack_from("<IQ", d, off + 20)
                used_by_meta.append((first, (length + cluster - 1) // cluster))
    if bitmap_first is None or not 2 <= bitmap_first < count + 2 or bitmap_len * 8 < count:
        raise Inconsistent("no usable allocation bitmap entry in the root directory")
    nclusters = (bitmap_len + cluster - 1) // cluster
    clusters = chain(bitmap_first)[:nclusters]  # its FAT chain, else contiguous clusters
    if len(clusters) < nclusters:
        clusters = list(range(bitmap_first, bitmap_first + nclusters))
    bitmap = b"".join(read(at(n), cluster) for n in clusters)[: (count + 7) // 8]
    used_by_meta += [(n, 1) for n in clusters]
    base = heap * bps
    fs.free = free_ranges(bitmap, base, cluster, base + count * cluster)
    for first, n in used_by_meta:
        if next(overlapping(fs.free, at(first), at(first) + n * cluster), None) is not None:
            raise Inconsistent(f"the allocation bitmap marks system clusters ({first}..) free")
    return fs
