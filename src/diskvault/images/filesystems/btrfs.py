"""Btrfs free space on a single device: the device space no chunk uses, and the space of each
single-profile data chunk that no extent uses (the extent tree's EXTENT_ITEMs).

Format: the Btrfs documentation's "On-disk format" (btrfs.readthedocs.io) and the kernel's
uapi/linux/btrfs_tree.h: superblock at 64 KiB (copies at 64 MiB and 256 GiB), the system
chunk array that maps the chunk tree, the chunk tree (logical to physical), the root tree
(where the extent tree is). Little-endian; CRC32C checksums.

Kept as used, whatever the trees say: the first MiB (boot loaders), every superblock copy,
every system and metadata chunk (and a mixed or DUP data chunk) whole. Checked before use
(Inconsistent otherwise): the superblock's checksum (CRC32C only: other checksum types are
read whole), one device, no log tree (fsynced changes not yet committed: their extents are
not in the extent tree), no feature this reader does not know (nor the block group tree), every tree block's checksum,
address, filesystem id, level and generation; every chunk on the device and inside it; and
each data chunk's extents inside it, not overlapping, summing to its block group's ``used``.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator

from .common import FsMap, Inconsistent, Reader, crc32c_raw
from .ranges import normalise

SUPER = 0x10000
MAGIC = b"_BHRfS_M"
MIRRORS = (0x10000, 64 << 20, 256 << 30)
RESERVED = 1 << 20  # the first MiB is never allocated
HEADER = 0x65
CHUNK_ITEM, ROOT_ITEM, EXTENT_ITEM, BLOCK_GROUP_ITEM = 228, 132, 168, 192
EXTENT_TREE = 2
DATA, SYSTEM, METADATA, DUP = 0x1, 0x2, 0x4, 0x20
PROFILES = 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400
INCOMPAT_METADATA_UUID = 1 << 10
INCOMPAT_KNOWN = (1 << 0 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 9
                  | INCOMPAT_METADATA_UUID | 1 << 11)  # not zoned, extent tree v2, raid stripe tree
COMPAT_RO_BLOCK_GROUP_TREE = 1 << 3


def probe(read: Reader, size: int) -> bool:
    return size >= SUPER + 4096 and read(SUPER + 0x40, 8) == MAGIC


def _crc_ok(block: bytes) -> bool:
    return struct.pack("<I", crc32c_raw(0xFFFFFFFF, block[0x20:]) ^ 0xFFFFFFFF) == block[:4]


class _Btrfs:
    def __init__(self, read: Reader, size: int) -> None:
        self.read = read
        sb = read(SUPER, 4096)
        csum_type = struct.unpack_from("<H", sb, 0xC4)[0]
        if csum_type:
            raise Inconsistent(f"its checksums are of type {csum_type} (only CRC32C is checked here)")
        if not _crc_ok(sb):
            raise Inconsistent("the superblock fails its checksum")
        self.generation, self.root, self.chunk_root, log_root = struct.unpack_from("<QQQQ", sb, 0x48)
        self.num_devices = struct.unpack_from("<Q", sb, 0x88)[0]
        self.sectorsize, self.nodesize = struct.unpack_from("<II", sb, 0x90)
        sys_size = struct.unpack_from("<I", sb, 0xA0)[0]
        compat_ro, incompat = struct.unpack_from("<QQ", sb, 0xB4)
        self.root_level, self.chunk_level = sb[0xC6], sb[0xC7]
        devid, self.dev_bytes = struct.unpack_from("<QQ", sb, 0xC9)
        self.fsid = sb[0x23B:0x24B] if incompat & INCOMPAT_METADATA_UUID else sb[0x20:0x30]
        if self.num_devices != 1:
            raise Inconsistent(f"it spans {self.num_devices} devices")
        if log_root:
            raise Inconsistent("its log tree holds fsynced changes not yet committed; it was not cleanly unmounted")
        if compat_ro & COMPAT_RO_BLOCK_GROUP_TREE:
            raise Inconsistent("it keeps its block groups in their own tree, which diskvault does not read")
        if incompat & ~INCOMPAT_KNOWN:
            raise Inconsistent(f"it uses features diskvault does not read (incompat flags {incompat:#x})")
        ss, ns = self.sectorsize, self.nodesize
        if self.dev_bytes > size:
            raise Inconsistent(f"the filesystem is {self.dev_bytes} bytes, longer than the {size} bytes that hold it")
        if (not 4096 <= ss <= 65536 or ss & (ss - 1) or not ss <= ns <= 65536 or ns & (ns - 1)
                or self.dev_bytes < RESERVED or sys_size > 2048):
            raise Inconsistent(f"impossible geometry (device of {self.dev_bytes} bytes, sectors of {ss}, nodes of "
                               f"{ns}) for {size} bytes")
        self.devid = devid
        self._chunks: dict[int, tuple[int, int, tuple[int, ...]]] = {}  # logical -> (length, type, stripes)
        self._starts: list[int] = []  # the chunks' logical starts, sorted
        arr, p = sb[0x32B:0x32B + sys_size], 0
        while p < len(arr):
            _oid, kind, logical = struct.unpack_from("<QBQ", arr, p)
            if kind != CHUNK_ITEM:
                raise Inconsistent("the system chunk array holds something else")
            p += 17 + self._add_chunk(logical, arr, p + 17)
        for _oid, kind, logical, data in self.items(self.chunk_root, self.chunk_level):
            if kind == CHUNK_ITEM:
                self._add_chunk(logical, data, 0)
        self.chunks = sorted((lg, n, k, st) for lg, (n, k, st) in self._chunks.items())
        for a, b in zip(self.chunks, self.chunks[1:]):
            if a[0] + a[1] > b[0]:
                raise Inconsistent(f"chunks {a[0]} and {b[0]} overlap")
        stripes = sorted((s, s + n) for _lg, n, _k, st in self.chunks for s in st)
        for a, b in zip(stripes, stripes[1:]):
            if a[1] > b[0]:
                raise Inconsistent(f"two chunks share device bytes at {b[0]}")

    def _add_chunk(self, logical: int, buf: bytes, p: int) -> int:
        """Record the chunk item at ``buf[p:]``; returns its size in bytes."""
        length, _owner, _stripe_len, kind = struct.unpack_from("<QQQQ", buf, p)
        n = struct.unpack_from("<H", buf, p + 44)[0]
        if not n or p + 48 + 32 * n > len(buf):
            raise Inconsistent(f"chunk {logical} has {n} stripes")
        stripes = []
        for i in range(n):
            devid, offset = struct.unpack_from("<QQ", buf, p + 48 + 32 * i)
            if devid != self.devid or offset + length > self.dev_bytes or offset < RESERVED:
                raise Inconsistent(f"chunk {logical} lies outside the device")
            stripes.append(offset)
        if kind & PROFILES & ~DUP or (kind & DUP) != (DUP if n == 2 else 0) or n > 2 or not length:
            raise Inconsistent(f"chunk {logical} has a profile diskvault does not read (type {kind:#x})")
        if logical not in self._chunks:
            bisect.insort(self._starts, logical)
        if self._chunks.setdefault(logical, (length, kind, tuple(stripes))) != (length, kind, tuple(stripes)):
            raise Inconsistent(f"chunk {logical} is described twice, differently")
        return 48 + 32 * n

    def physical(self, logical: int, length: int) -> int:
        i = bisect.bisect_right(self._starts, logical) - 1
        if i >= 0:
            start = self._starts[i]
            n, _kind, stripes = self._chunks[start]
            if logical + length <= start + n:
                return stripes[0] + logical - start
        raise Inconsistent(f"no chunk holds logical address {logical}")

    def node(self, logical: int, level: int) -> bytes:
        b = self.read(self.physical(logical, self.nodesize), self.nodesize)
        bytenr, = struct.unpack_from("<Q", b, 0x30)
        generation, = struct.unpack_from("<Q", b, 0x50)
        if not _crc_ok(b):
            raise Inconsistent(f"tree block {logical} fails its checksum")
        if b[0x20:0x30] != self.fsid or bytenr != logical or b[0x64] != level or generation > self.generation:
            raise Inconsistent(f"tree block {logical} is not the one its parent names")
        return b

    def items(self, root: int, level: int) -> Iterator[tuple[int, int, int, bytes]]:
        """Every leaf item ``(objectid, type, offset, data)`` of the tree at ``root``, in key order."""
        stack = [(root, level)]
        seen = 0
        while stack:
            logical, lv = stack.pop()
            seen += 1
            if seen > self.dev_bytes // self.nodesize:
                raise Inconsistent("a tree refers to itself")
            b = self.node(logical, lv)
            n, = struct.unpack_from("<I", b, 0x60)
            if lv:
                if not 1 <= n <= (self.nodesize - HEADER) // 33:
                    raise Inconsistent(f"tree block {logical} holds {n} pointers")
                stack += [(struct.unpack_from("<Q", b, HEADER + 33 * i + 17)[0], lv - 1) for i in range(n - 1, -1, -1)]
                continue
            if n > (self.nodesize - HEADER) // 25:
                raise Inconsistent(f"tree block {logical} holds {n} items")
            for i in range(n):
                oid, kind, off, at, sz = struct.unpack_from("<QBQII", b, HEADER + 25 * i)
                if HEADER + at + sz > self.nodesize:
                    raise Inconsistent(f"an item of tree block {logical} lies outside it")
                yield oid, kind, off, b[HEADER + at:HEADER + at + sz]

    def root_of(self, tree: int) -> tuple[int, int]:
        for oid, kind, _off, data in self.items(self.root, self.root_level):
            if oid == tree and kind == ROOT_ITEM:
                return struct.unpack_from("<Q", data, 176)[0], data[238]
        raise Inconsistent(f"the root tree has no tree {tree}")


def read_map(read: Reader, size: int) -> FsMap:
    fs = _Btrfs(read, size)
    data = {logical: (length, stripes[0]) for logical, length, kind, stripes in fs.chunks
            if kind & DATA and not kind & (METADATA | SYSTEM | PROFILES)}  # single-profile data chunks
    starts = sorted(data)
    extent_root = fs.root_of(EXTENT_TREE)
    cursor = {start: start for start in starts}  # per data chunk: the logical end of its last extent so far
    counted = dict.fromkeys(starts, 0)
    gaps: list[tuple[int, int]] = []  # logical ranges of data chunks that no extent uses

    def gap(a: int, b: int) -> None:
        if b > a:
            gaps.append((a, b))

    groups: dict[int, tuple[int, int]] = {}  # data chunk -> (its block group's length, used bytes)
    at = 0
    for s, kind, n, item in fs.items(*extent_root):  # in key order: by logical address
        if kind == BLOCK_GROUP_ITEM and s in data:
            groups[s] = (n, struct.unpack_from("<Q", item, 0)[0])
        if kind != EXTENT_ITEM:
            continue
        e = s + n
        if s < at or e <= s:
            raise Inconsistent(f"extents overlap at logical address {s}")
        at = e
        i = bisect.bisect_right(starts, s) - 1
        if i < 0 or s >= starts[i] + data[starts[i]][0]:
            continue  # in a chunk kept whole
        start = starts[i]
        if e > start + data[start][0]:
            raise Inconsistent(f"the extent at logical address {s} crosses its chunk's end")
        gap(cursor[start], s)
        cursor[start] = e
        counted[start] += n
    for start in starts:
        gap(cursor[start], start + data[start][0])
    for start in starts:
        if start not in groups:
            raise Inconsistent(f"the data chunk at logical address {start} has no block group")
        if groups[start] != (data[start][0], counted[start]):
            raise Inconsistent(f"the block group at logical address {start} does not count its extents")
    free = []
    for a, b in gaps:  # to device offsets
        start = starts[bisect.bisect_right(starts, a) - 1]
        free.append((data[start][1] + a - start, data[start][1] + b - start))
    pos = 0  # and the device space no chunk uses
    for a, b in sorted((s, s + n) for _lg, n, _k, stripes in fs.chunks for s in stripes) + [(fs.dev_bytes,) * 2]:
        free.append((pos, a))
        pos = b
    out = FsMap("btrfs", fs.sectorsize)
    keep = [(0, RESERVED)] + [(m, m + 4096) for m in MIRRORS]
    for a, b in normalise(free):
        for lo, hi in keep:  # (sorted; a free range may hold a superblock copy)
            if lo < b and a < hi:
                out.free.append((a, lo))
                a = hi
        if b > a:
            out.free.append((a, b))
    out.free = [(a, b) for a, b in out.free if b > a]
    return out
