"""NTFS cluster allocation, read from $Bitmap (MFT record 6) through its data runs.

Checked before use (Inconsistent otherwise): the MFT records' update-sequence fixups, the
data runs lying inside the volume, $Bitmap covering every cluster, and every cluster that an
in-use MFT record's non-resident attribute (a file's data, a directory's index, the system
files) occupies marked used in $Bitmap: a map that frees a file's clusters is never trusted.
A volume marked dirty (in use, or left hibernated by Windows Fast Startup) or whose
hiberfil.sys (in the root directory) holds a hibernated session (``hibr``/``wake`` signature) still has a valid
$Bitmap: it is used, and a note says so. BitLocker volumes (``-FVE-FS-``) are probed
elsewhere (``__init__``).
"""

from __future__ import annotations

import struct

from .common import FsMap, Inconsistent, Reader, free_ranges
from .ranges import overlapping

ATTR_FILE_NAME, ATTR_VOLUME_INFORMATION, ATTR_DATA, ATTR_END = 0x30, 0x70, 0x80, 0xFFFFFFFF
ROOT = 5  # the root directory's MFT record
VOLUME_DIRTY = 0x0001
MFT_READ = 4 << 20


def probe(boot: bytes) -> bool:
    return boot[3:11] == b"NTFS    "


def _runs(raw: bytes, total_clusters: int) -> list[tuple[int, int]]:
    """``(lcn, count)`` of a data-run list (sparse runs left out)."""
    out = []
    pos, lcn = 0, 0
    while pos < len(raw) and raw[pos]:
        head = raw[pos]
        nlen, noff = head & 0xF, head >> 4
        if not nlen or pos + 1 + nlen + noff > len(raw) or nlen > 8 or noff > 8:
            raise Inconsistent("a data run list is malformed")
        count = int.from_bytes(raw[pos + 1:pos + 1 + nlen], "little")
        if noff:
            lcn += int.from_bytes(raw[pos + 1 + nlen:pos + 1 + nlen + noff], "little", signed=True)
            if lcn < 0 or lcn + count > total_clusters:
                raise Inconsistent(f"a data run ({count} clusters at {lcn}) lies outside the volume")
            out.append((lcn, count))
        pos += 1 + nlen + noff
    return out


class _Volume:
    def __init__(self, read: Reader, size: int) -> None:
        boot = read(0, 512)
        self.read = read
        bps = struct.unpack_from("<H", boot, 0x0B)[0]
        spc = boot[0x0D]
        spc = 1 << (256 - spc) if spc > 0x80 else spc
        if bps not in (512, 1024, 2048, 4096) or not spc or bps * spc > 2 << 20:
            raise Inconsistent(f"impossible geometry ({bps} B sectors, {spc} per cluster)")
        self.cluster = bps * spc
        sectors, self.mft_lcn = struct.unpack_from("<QQ", boot, 0x28)
        self.clusters = sectors // spc
        if sectors * bps > size:
            raise Inconsistent(f"the volume ({sectors * bps} bytes) is bigger than its partition ({size})")
        cpr = struct.unpack_from("<b", boot, 0x40)[0]
        self.record = cpr * self.cluster if cpr > 0 else 1 << -cpr
        if not 512 <= self.record <= 65536 or self.mft_lcn >= self.clusters:
            raise Inconsistent(f"MFT record size {self.record} or MFT position {self.mft_lcn}")

    def fixup(self, rec: bytearray, n: int) -> bool:
        """Apply the update sequence; False for a record not in use or not a record."""
        if rec[:4] != b"FILE":
            return False
        usa, count = struct.unpack_from("<HH", rec, 4)
        if usa + 2 * count > len(rec) or (count - 1) * 512 > len(rec):
            raise Inconsistent(f"MFT record {n} has a bad update sequence")
        usn = rec[usa:usa + 2]
        for i in range(1, count):
            end = i * 512
            if rec[end - 2:end] != usn:
                raise Inconsistent(f"MFT record {n} fails its update-sequence check (a torn write)")
            rec[end - 2:end] = rec[usa + 2 * i:usa + 2 * i + 2]
        return bool(struct.unpack_from("<H", rec, 0x16)[0] & 1)

    def attributes(self, rec: bytearray, n: int):
        """``(type, name_length, resident value | None, runs | None, data_size, first_vcn)``."""
        off = struct.unpack_from("<H", rec, 0x14)[0]
        while off + 8 <= len(rec):
            kind, length = struct.unpack_from("<II", rec, off)
            if kind == ATTR_END:
                return
            if length < 16 or off + length > len(rec):
                raise Inconsistent(f"MFT record {n} has a malformed attribute")
            a = bytes(rec[off:off + length])
            if a[8]:
                if length < 0x40:
                    raise Inconsistent(f"MFT record {n} has a malformed attribute")
                vcn, = struct.unpack_from("<Q", a, 0x10)
                mp, = struct.unpack_from("<H", a, 0x20)
                data_size, = struct.unpack_from("<Q", a, 0x30)
                yield kind, a[9], None, _runs(a[mp:], self.clusters), data_size, vcn
            else:
                vlen, voff = struct.unpack_from("<IH", a, 0x10)
                yield kind, a[9], a[voff:voff + vlen], None, vlen, 0
            off += length
        raise Inconsistent(f"MFT record {n} has no end marker")

    def read_runs(self, runs: list[tuple[int, int]], size: int) -> bytes:
        out = bytearray()
        for lcn, count in runs:
            if len(out) >= size:
                break
            out += self.read(lcn * self.cluster, min(count * self.cluster, size - len(out)))
        if len(out) < size:
            raise Inconsistent("an attribute's data runs end before its data")
        return bytes(out)

    def data(self, rec: bytearray, n: int) -> tuple[list[tuple[int, int]], int]:
        """The runs and size of a system file's unnamed $DATA (all in its base record)."""
        for kind, name_len, _value, runs, data_size, vcn in self.attributes(rec, n):
            if kind == ATTR_DATA and not name_len and runs is not None and vcn == 0:
                if sum(c for _, c in runs) * self.cluster < data_size:
                    raise Inconsistent(f"MFT record {n}'s data is continued in other records (an attribute list)")
                return runs, data_size
        raise Inconsistent(f"MFT record {n} has no non-resident data")


def read_map(read: Reader, size: int) -> FsMap:
    v = _Volume(read, size)
    fs = FsMap("ntfs", v.cluster)

    def system_record(n: int) -> bytearray:
        rec = bytearray(read(v.mft_lcn * v.cluster + n * v.record, v.record))
        if not v.fixup(rec, n):
            raise Inconsistent(f"MFT record {n} (a system file) is not in use")
        return rec

    mft_runs, mft_size = v.data(system_record(0), 0)
    bm_runs, bm_size = v.data(system_record(6), 6)
    if bm_size * 8 < v.clusters:
        raise Inconsistent(f"$Bitmap holds {bm_size * 8} bits for {v.clusters} clusters")
    bitmap = v.read_runs(bm_runs, (v.clusters + 7) // 8)
    limit = v.clusters * v.cluster
    fs.free = free_ranges(bitmap, 0, v.cluster, limit)
    for kind, _nl, value, _runs, _size, _vcn in v.attributes(system_record(3), 3):
        if kind == ATTR_VOLUME_INFORMATION and value is not None and len(value) >= 12:
            if struct.unpack_from("<H", value, 0x0A)[0] & VOLUME_DIRTY:
                fs.notes.append("the volume is marked dirty (in use, or hibernated by Windows Fast Startup): "
                                "its $Bitmap is valid and was used")

    # every cluster an in-use record occupies must be marked used
    hiberfil: int | None = None  # first cluster of \hiberfil.sys
    done = 0
    records = mft_size // v.record
    for lcn, count in mft_runs:
        for piece in range(0, count * v.cluster, MFT_READ):
            if done >= records:
                break
            want = min(MFT_READ, count * v.cluster - piece, (records - done) * v.record)
            chunk = read(lcn * v.cluster + piece, want)
            for off in range(0, len(chunk) - v.record + 1, v.record):
                n = done + off // v.record
                rec = bytearray(chunk[off:off + v.record])
                try:
                    if not v.fixup(rec, n):
                        continue
                except Inconsistent:
                    if n < 16:
                        raise
                    continue  # a torn record of a deleted file: its clusters are not counted on
                named_hiberfil = False
                for kind, name_len, value, runs, _size, vcn in v.attributes(rec, n):
                    if kind == ATTR_FILE_NAME and value is not None and len(value) > 0x42:
                        parent = int.from_bytes(value[:6], "little")
                        name = value[0x42:0x42 + 2 * value[0x40]].decode("utf-16-le", "replace").lower()
                        named_hiberfil = named_hiberfil or (parent == ROOT and name == "hiberfil.sys")
                    if kind == ATTR_DATA and named_hiberfil and runs and not vcn and not name_len:
                        hiberfil = runs[0][0]
                    for r_lcn, r_count in runs or ():
                        hit = next(overlapping(fs.free, r_lcn * v.cluster, (r_lcn + r_count) * v.cluster), None)
                        if hit is not None:
                            raise Inconsistent(f"$Bitmap marks clusters {hit[0] // v.cluster}.. free that MFT "
                                               f"record {n} uses")
            done += len(chunk) // v.record
    if hiberfil is not None and read(hiberfil * v.cluster, 4).lower() in (b"hibr", b"wake"):
        fs.notes.append("Windows is hibernated on it (Fast Startup: \\hiberfil.sys holds a session): its $Bitmap "
                        "is valid and was used; the restored volume resumes that session when Windows starts")
    return fs
