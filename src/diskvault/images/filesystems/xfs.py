"""XFS free space, read from each allocation group's by-block free-space B+tree (bnobt).

Format: "XFS Algorithms & Data Structures" (kernel.org, xfs-documentation), sections
"Allocation Groups" (superblock, AGF), "B+trees" (short-form btree blocks) and "Journaling
Log" (log records, unmount record); the log check follows the kernel's xlog_find_head and
xlog_check_unmount_rec (fs/xfs/xfs_log_recover.c). All fields are big-endian; CRCs are
CRC32C stored little-endian.

Free ranges are the records of each AG's bnobt; the blocks on the AG free list (AGFL) are
kept as used (a few blocks per AG). Checked before use (Inconsistent otherwise): the
superblock, every AGF and btree block (magic, level, record count, owner, self-address,
filesystem UUID and, on v5 filesystems, CRC32C); each AG's records inside the AG, sorted and
not overlapping, summing to the AGF's free count; and the by-size btree (cntbt) holding
exactly the same extents (two independent copies, like the FAT's). The internal log must end
with an unmount record (a clean unmount): a log with changes not yet written back may
allocate blocks that the on-disk btrees still call free. An external log cannot be checked,
so such a filesystem is read whole.
"""

from __future__ import annotations

import struct

from .common import FsMap, Inconsistent, Reader, crc32c_raw

SB_MAGIC = b"XFSB"
AGF_MAGIC = b"XAGF"
LOG_MAGIC = 0xFEEDBABE
NULL_AGBLOCK = 0xFFFFFFFF
INCOMPAT_META_UUID, INCOMPAT_NEEDSREPAIR = 0x4, 0x10
INCOMPAT_KNOWN = 0xFF  # ftype, sparse inodes, meta UUID, bigtime, needsrepair, nrext64, exchange-range, parent
# pointers; later ones (metadata directories, realtime groups, zoned) are read whole
XLOG_UNMOUNT_TRANS = 0x20
BB = 512  # the log's basic block
LOG_WINDOW = 4096  # basic blocks around the head that must agree: 8 in-core logs of 256 KiB


def probe(boot: bytes) -> bool:
    """``boot``: the first 512 bytes."""
    return boot[:4] == SB_MAGIC


def _crc_ok(block: bytes, at: int) -> bool:
    crc = crc32c_raw(0xFFFFFFFF, block[:at] + b"\0\0\0\0" + block[at + 4:]) ^ 0xFFFFFFFF
    return struct.pack("<I", crc) == block[at:at + 4]


class _Fs:
    def __init__(self, read: Reader, size: int) -> None:
        self.read = read
        sb = read(0, 512)
        self.bs, self.dblocks = struct.unpack_from(">IQ", sb, 0x4)
        self.logstart = struct.unpack_from(">Q", sb, 0x30)[0]
        self.agblocks, self.agcount, _rbmblocks, self.logblocks, version, sectsize = struct.unpack_from(">IIIIHH", sb, 0x54)
        self.v5 = version & 0xF == 5
        self.uuid = sb[0x20:0x30]
        self.agblklog = sb[0x7C]
        incompat = struct.unpack_from(">I", sb, 0xD8)[0] if self.v5 else 0
        if not 512 <= sectsize <= 32768 or sectsize & (sectsize - 1):
            raise Inconsistent(f"sector size {sectsize}")
        sb = read(0, sectsize)
        if self.v5:
            if not _crc_ok(sb, 0xE0):
                raise Inconsistent("the superblock fails its checksum")
            if incompat & INCOMPAT_META_UUID:
                self.uuid = sb[0xF8:0x108]
            if incompat & INCOMPAT_NEEDSREPAIR:
                raise Inconsistent("it is marked as needing xfs_repair")
            if incompat & ~INCOMPAT_KNOWN:
                raise Inconsistent(f"it uses features diskvault does not read (incompat flags {incompat:#x})")
        elif version & 0xF != 4:
            raise Inconsistent(f"superblock version {version & 0xF}")
        if sb[0x7E]:
            raise Inconsistent("mkfs.xfs did not finish it")
        self.sectsize = sectsize
        bs, agb = self.bs, self.agblocks
        if 0 < self.dblocks * bs > size and 512 <= bs <= 65536:
            raise Inconsistent(f"the filesystem is {self.dblocks * bs} bytes, longer than the {size} bytes that hold it")
        if (not 512 <= bs <= 65536 or bs & (bs - 1) or not agb or not self.agcount
                or (self.agcount - 1) * agb >= self.dblocks or self.dblocks > self.agcount * agb
                or agb > 1 << self.agblklog):
            raise Inconsistent(f"impossible geometry ({self.dblocks} blocks of {bs} B in {self.agcount} groups of "
                               f"{agb}) for {size} bytes")
        self.hdr = 56 if self.v5 else 16  # short-form btree block header

    def ag_length(self, ag: int) -> int:
        return min(self.agblocks, self.dblocks - ag * self.agblocks)

    def block(self, ag: int, agbno: int) -> bytes:
        return self.read((ag * self.agblocks + agbno) * self.bs, self.bs)

    def agf(self, ag: int) -> tuple[tuple[int, int], tuple[int, int], int]:
        """((bno root, levels), (cnt root, levels), free blocks) of AG ``ag``."""
        sec = self.read(ag * self.agblocks * self.bs + self.sectsize, self.sectsize)
        magic, _version, seq, length, bno, cnt, _rmap, bno_lv, cnt_lv = struct.unpack_from(">4s8I", sec, 0)
        free = struct.unpack_from(">I", sec, 0x34)[0]
        if magic != AGF_MAGIC or seq != ag or length != self.ag_length(ag):
            raise Inconsistent(f"the header of allocation group {ag} is not valid")
        if self.v5 and (sec[0x40:0x50] != self.uuid or not _crc_ok(sec, 0xD8)):
            raise Inconsistent(f"the header of allocation group {ag} fails its checksum")
        return (bno, bno_lv), (cnt, cnt_lv), free

    def records(self, ag: int, root: tuple[int, int], magic: bytes) -> list[tuple[int, int]]:
        """Every (start block, block count) record of the btree at ``root`` (root block,
        levels), level by level from the root."""
        agno, levels = root
        length = self.ag_length(ag)
        if not 1 <= levels <= 9:
            raise Inconsistent(f"a free-space btree of allocation group {ag} has {levels} levels")
        level_blocks, out, seen = [agno], [], 0
        for level in range(levels - 1, -1, -1):
            children = []
            for agbno in level_blocks:
                seen += 1
                if not agbno < length or seen > length:
                    raise Inconsistent(f"a free-space btree of allocation group {ag} points outside it")
                b = self.block(ag, agbno)
                lv, n = struct.unpack_from(">HH", b, 4)
                if b[:4] != magic or lv != level:
                    raise Inconsistent(f"block {agbno} of allocation group {ag} is not a free-space btree block")
                if self.v5:
                    daddr, _lsn, uuid, owner = struct.unpack_from(">QQ16sI", b, 16)
                    if (daddr != (ag * self.agblocks + agbno) * self.bs // 512 or uuid != self.uuid or owner != ag
                            or not _crc_ok(b, 52)):
                        raise Inconsistent(f"block {agbno} of allocation group {ag} fails its checksum")
                if level:
                    maxrecs = (self.bs - self.hdr) // 12
                    if not 1 <= n <= maxrecs:
                        raise Inconsistent(f"block {agbno} of allocation group {ag} holds {n} pointers")
                    children += struct.unpack_from(f">{n}I", b, self.hdr + maxrecs * 8)
                else:
                    if n > (self.bs - self.hdr) // 8:
                        raise Inconsistent(f"block {agbno} of allocation group {ag} holds {n} records")
                    flat = struct.unpack_from(f">{2 * n}I", b, self.hdr)
                    out += zip(flat[::2], flat[1::2])
            level_blocks = children
        return out

    def log_is_clean(self) -> bool:
        """Whether the internal log's last record is an unmount record (xlog_find_head, then
        xlog_check_unmount_rec); False when anything about it is unclear."""
        ag, agbno = self.logstart >> self.agblklog, self.logstart & ((1 << self.agblklog) - 1)
        start = (ag * self.agblocks + agbno) * self.bs
        n = self.logblocks * self.bs // BB
        if not self.logblocks or ag >= self.agcount or agbno + self.logblocks > self.ag_length(ag):
            raise Inconsistent("its log lies outside the filesystem")

        def bbs(first: int, count: int) -> bytes:
            return self.read(start + first * BB, count * BB)

        def cycle(data: bytes, i: int = 0) -> int:
            w0, w1 = struct.unpack_from(">II", data, i * BB)
            return w1 if w0 == LOG_MAGIC else w0

        top = cycle(bbs(0, 1))
        if cycle(bbs(n - 1, 1)) == top:
            head = 0  # every block written in the same pass: the last record ends at the log's end
        else:
            lo, hi = 0, n - 1  # cycle(lo) == top, cycle(hi) != top
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if cycle(bbs(mid, 1)) == top else (lo, mid)
            head = hi
        end = head or n  # the blocks before the head, in this pass
        before = bbs(max(0, end - LOG_WINDOW), min(end, LOG_WINDOW))
        if any(cycle(before, i) != top for i in range(len(before) // BB)):
            return False  # a hole before the head: writes were in flight
        after = bbs(head, min(n - head, LOG_WINDOW)) if head else bbs(0, min(n, LOG_WINDOW))
        if any((cycle(after, i) == top) != (not head) for i in range(len(after) // BB)):
            return False  # the pass after the head began here, or (head 0) a newer pass did
        for i in range(len(before) // BB - 1, -1, -1):  # the last record's header
            if struct.unpack_from(">I", before, i * BB)[0] == LOG_MAGIC:
                break
        else:
            return False
        rec = end - len(before) // BB + i
        _magic, cyc, version, length, lsn = struct.unpack_from(">IIIIQ", before, i * BB)
        logops = struct.unpack_from(">I", before, i * BB + 40)[0]
        hsize = struct.unpack_from(">I", before, i * BB + 320)[0]
        hblks = (hsize + 32767) // 32768 if version & 2 and hsize > 32768 else 1
        if cyc != top or lsn >> 32 != top or rec + hblks + (length + BB - 1) // BB != end or logops != 1:
            return False
        if rec + hblks >= end:
            return False
        op = bbs(rec + hblks, 1)
        return op[8] == 0xAA and bool(op[9] & XLOG_UNMOUNT_TRANS)


def read_map(read: Reader, size: int) -> FsMap:
    fs = _Fs(read, size)
    out = FsMap("xfs", fs.bs)
    if not fs.logstart:
        raise Inconsistent("its log is on another device, so whether it was cleanly unmounted cannot be checked")
    if not fs.log_is_clean():
        raise Inconsistent("its log holds changes not yet written back; it was not cleanly unmounted")
    bno_magic, cnt_magic = (b"AB3B", b"AB3C") if fs.v5 else (b"ABTB", b"ABTC")
    for ag in range(fs.agcount):
        bno, cnt, free = fs.agf(ag)
        recs = fs.records(ag, bno, bno_magic)
        length, at, total = fs.ag_length(ag), 0, 0
        for s, n in recs:
            if s < at or not n or s + n > length:
                raise Inconsistent(f"the free-space btree of allocation group {ag} is out of order")
            at, total = s + n, total + n
        if total != free:
            raise Inconsistent(f"allocation group {ag}'s btree has {total} free blocks, its header says {free}")
        if sorted(fs.records(ag, cnt, cnt_magic)) != recs:
            raise Inconsistent(f"allocation group {ag}'s two free-space btrees differ")
        base = ag * fs.agblocks
        for s, n in recs:
            a, b = (base + s) * fs.bs, (base + s + n) * fs.bs
            if out.free and out.free[-1][1] == a:
                out.free[-1] = (out.free[-1][0], b)
            else:
                out.free.append((a, b))
    return out
