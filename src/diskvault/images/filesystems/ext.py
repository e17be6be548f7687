"""ext2/3/4 block allocation, read from the group descriptors' block bitmaps.

Handles 1-64 KiB blocks, bigalloc clusters (the bitmaps count clusters), 64bit descriptors,
meta_bg descriptor placement, flex_bg (bitmaps anywhere: each descriptor says where), and
uninit_bg/metadata_csum groups flagged BLOCK_UNINIT (no bitmap on disk: the group's only used
blocks are its superblock/descriptor copies and the bitmaps and inode tables lying in it, as
the kernel computes them). Checked before use (Inconsistent otherwise): superblock, group
descriptor and block bitmap checksums where metadata_csum has them, every location inside
the filesystem, each group's free count equal to its bitmap's, the total near the
superblock's, and no journal left to replay (its blocks may be allocated only in the journal).
"""

from __future__ import annotations

import bisect
import struct

from .common import FsMap, Inconsistent, Reader, crc32c_raw, free_ranges

MAGIC = 0xEF53
INCOMPAT_RECOVER, INCOMPAT_META_BG, INCOMPAT_64BIT, INCOMPAT_CSUM_SEED = 0x4, 0x10, 0x80, 0x2000
RO_SPARSE_SUPER, RO_GDT_CSUM, RO_BIGALLOC, RO_METADATA_CSUM = 0x1, 0x10, 0x200, 0x400
COMPAT_SPARSE_SUPER2 = 0x200
BG_BLOCK_UNINIT = 0x2


def probe(sb: bytes) -> bool:
    """``sb``: the 1024 bytes at byte 1024."""
    return len(sb) >= 1024 and struct.unpack_from("<H", sb, 0x38)[0] == MAGIC


def fs_name(sb: bytes) -> str:
    """ext4 when any feature beyond ext3's is on, ext3 with a journal, else ext2."""
    incompat, ro_compat, compat = _u32(sb, 0x60), _u32(sb, 0x64), _u32(sb, 0x5C)
    return "ext4" if incompat & ~0x6 or ro_compat & ~0x3 else ("ext3" if compat & 0x4 else "ext2")


def _u32(b: bytes, o: int) -> int:
    return struct.unpack_from("<I", b, o)[0]


def _u16(b: bytes, o: int) -> int:
    return struct.unpack_from("<H", b, o)[0]


def _power_of(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


def read_map(read: Reader, size: int) -> FsMap:
    sb = read(1024, 1024)
    incompat, ro_compat, compat = _u32(sb, 0x60), _u32(sb, 0x64), _u32(sb, 0x5C)
    name = fs_name(sb)
    log_block = _u32(sb, 0x18)
    if log_block > 6:
        raise Inconsistent(f"block size 2^{10 + log_block} bytes")
    bs = 1024 << log_block
    fs = FsMap(name, bs)
    csum = bool(ro_compat & RO_METADATA_CSUM)
    if csum and crc32c_raw(0xFFFFFFFF, sb[:0x3FC]) != _u32(sb, 0x3FC):
        raise Inconsistent("the superblock fails its checksum")
    if incompat & INCOMPAT_RECOVER:
        raise Inconsistent("its journal holds changes not yet written back; it was not cleanly unmounted")
    ratio = 1 << (_u32(sb, 0x1C) - log_block) if ro_compat & RO_BIGALLOC else 1
    blocks = _u32(sb, 0x4) | ((_u32(sb, 0x150) << 32) if incompat & INCOMPAT_64BIT else 0)
    free_sb = _u32(sb, 0xC) | ((_u32(sb, 0x158) << 32) if incompat & INCOMPAT_64BIT else 0)
    first = _u32(sb, 0x14)
    bpg = _u32(sb, 0x20)
    cpg = _u32(sb, 0x24) if ratio > 1 else bpg
    if not bpg or cpg * ratio != bpg or cpg % 8 or cpg > 8 * bs or blocks * bs > size or first >= blocks:
        raise Inconsistent(f"impossible geometry ({blocks} blocks of {bs} B, {bpg} per group) for "
                           f"{size} bytes")
    unit = bs * ratio
    fs.block_size = unit
    groups = (blocks - first + bpg - 1) // bpg
    dsize = _u16(sb, 0xFE) if incompat & INCOMPAT_64BIT else 32
    if dsize < 32 or dsize > bs or dsize & (dsize - 1):
        raise Inconsistent(f"group descriptor size {dsize}")
    dpb = bs // dsize
    gdb = (groups + dpb - 1) // dpb
    seed = (_u32(sb, 0x270) if incompat & INCOMPAT_CSUM_SEED else crc32c_raw(0xFFFFFFFF, sb[0x68:0x78]))
    backups = (_u32(sb, 0x24C), _u32(sb, 0x250)) if compat & COMPAT_SPARSE_SUPER2 else None
    first_meta = _u32(sb, 0x104) if incompat & INCOMPAT_META_BG else gdb
    reserved_gdt = _u16(sb, 0xCE)

    def has_super(g: int) -> bool:
        if g == 0:
            return True
        if backups is not None:
            return g in backups
        if g <= 1 or not ro_compat & RO_SPARSE_SUPER:
            return True
        return g % 2 == 1 and (_power_of(g, 3) or _power_of(g, 5) or _power_of(g, 7))

    def group_start(g: int) -> int:
        return first + g * bpg

    def base_meta(g: int) -> int:  # blocks at a group's start: superblock and descriptor copies
        n = 1 if has_super(g) else 0
        if incompat & INCOMPAT_META_BG and g // dpb >= first_meta:
            m = g // dpb * dpb
            n += 1 if g in (m, m + 1, m + dpb - 1) else 0
        elif has_super(g):
            n += min(first_meta, gdb) + reserved_gdt
        return n

    # the descriptors
    table = bytearray()
    for i in range(gdb):
        if i < first_meta:  # right after the superblock's block (0, or 1 with 1 KiB blocks)
            where = 1024 // bs + 1 + i
        else:
            where = group_start(i * dpb) + (1 if has_super(i * dpb) else 0) + (1 if bs == 1024 and not first and not i else 0)
        table += read(where * bs, bs)
    desc = []
    meta: list[int] = []  # every bitmap and inode-table block, for BLOCK_UNINIT groups
    itable_blocks = (_u32(sb, 0x28) * (_u16(sb, 0x58) if _u32(sb, 0x4C) else 128) + bs - 1) // bs
    for g in range(groups):
        d = bytes(table[g * dsize:(g + 1) * dsize])
        hi = dsize >= 64
        bb = _u32(d, 0) | ((_u32(d, 0x20) << 32) if hi else 0)
        ib = _u32(d, 4) | ((_u32(d, 0x24) << 32) if hi else 0)
        it = _u32(d, 8) | ((_u32(d, 0x28) << 32) if hi else 0)
        nfree = _u16(d, 0xC) | ((_u16(d, 0x2C) << 16) if hi else 0)
        flags = _u16(d, 0x12)
        bcsum = _u16(d, 0x18) | ((_u16(d, 0x38) << 16) if dsize >= 0x3C else 0)
        if csum:
            c = crc32c_raw(seed, struct.pack("<I", g))
            c = crc32c_raw(c, d[:0x1E] + b"\0\0" + d[0x20:])
            if c & 0xFFFF != _u16(d, 0x1E):
                raise Inconsistent(f"group descriptor {g} fails its checksum")
        for b, n in ((bb, 1), (ib, 1), (it, itable_blocks)):
            if not first <= b or b + n > blocks:
                raise Inconsistent(f"group {g} places its metadata outside the filesystem (block {b})")
        meta += [bb, ib, *range(it, it + itable_blocks)]
        desc.append((bb, nfree, flags, bcsum))
    meta.sort()

    used = bytearray()  # one bitmap per group, cpg bits each
    counted = 0
    for g, (bb, nfree, flags, bcsum) in enumerate(desc):
        start = group_start(g)
        n_blocks = min(bpg, blocks - start)
        n_units = (n_blocks + ratio - 1) // ratio
        if flags & BG_BLOCK_UNINIT and ro_compat & (RO_GDT_CSUM | RO_METADATA_CSUM):
            bits = bytearray(cpg // 8)
            marked = set(range(base_meta(g)))
            lo, hi = bisect.bisect_left(meta, start), bisect.bisect_left(meta, start + n_blocks)
            marked.update(b - start for b in meta[lo:hi])
            for b in marked:
                bits[b // ratio // 8] |= 1 << (b // ratio % 8)
        else:
            bits = bytearray(read(bb * bs, cpg // 8))
            if csum and crc32c_raw(seed, bytes(bits)) & (0xFFFFFFFF if dsize >= 0x3C else 0xFFFF) != bcsum:
                raise Inconsistent(f"the block bitmap of group {g} fails its checksum")
        free = n_units - sum(bin(b).count("1") for b in bits[: n_units // 8])
        if n_units % 8:
            free -= bin(bits[n_units // 8] & ((1 << (n_units % 8)) - 1)).count("1")
        if free != nfree:
            raise Inconsistent(f"group {g}'s block bitmap has {free} free clusters, its descriptor says {nfree}")
        counted += free
        if n_units < cpg:  # beyond the filesystem's end: used (not ours)
            for k in range(n_units, cpg):
                bits[k // 8] |= 1 << (k % 8)
        used += bits
    slack = max(blocks // 100, 1024)
    if abs(counted * ratio - free_sb) > slack:
        raise Inconsistent(f"the block bitmaps count {counted * ratio} free blocks, the superblock {free_sb}")
    fs.free = free_ranges(used, first * bs, unit, limit=blocks * bs)
    return fs
