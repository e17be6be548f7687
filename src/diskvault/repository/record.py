"""A snapshot's record: the fields its record file (``snapshots/<id>.json``) and its catalog
row hold, the record file's bytes and checksum. Sealed in an encrypted repository
(``record_file``; crypto.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..rawnames import escape, is_raw, unescape
from .crypto import Crypto
from .hashing import content_id


@dataclass
class SnapshotRecord:
    """One snapshot, as its record file (``to_json``) and catalog row (``to_row``) hold it.

    ``host`` and ``source`` are str as Python gives paths (``os.fsdecode``): a name that is not
    UTF-8 is kept byte for byte, as a BLOB in the catalog and as ``source`` (readable) plus
    ``source_raw`` (base64 of the bytes) in JSON (rawnames.py). ``seq``: repository-wide
    sequence number, one more than the highest in the catalog when saved (0: a record from
    before sequence numbers; these order by time). ``mounted``: where the source device was
    mounted when read (``{"mountpoint", "mode": "ro"|"rw", "device"}`` list), else None.
    ``size_changed``: ``{"before", "after"}`` bytes when the source's size changed while it
    was read (the snapshot holds the first ``before`` bytes), else None. ``format``: the
    virtual-disk format the source was read from (``vhdx``, ``vmdk``, ``qcow2``, ``vdi``;
    the snapshot holds the disk inside it), None for a raw image. ``filesystems``: the
    filesystems whose free blocks were skipped (recorded as zeros), one dict per partition
    (ops/fsmap.py); None when every block was read (--all-blocks, a stream, older records).
    ``warnings``: what
    the snapshot command reported (not stored)."""

    id: str
    time: str  # ISO 8601, UTC
    host: str
    source: str
    size: int
    tags: list[str]
    tree: str  # hex id of the root tree node
    data_bytes: int = 0
    zero_bytes: int = 0
    chunks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    duration: float = 0.0
    seq: int = 0
    mounted: list[dict] | None = None
    size_changed: dict | None = None
    format: str | None = None
    filesystems: list[dict] | None = None
    warnings: list[str] = field(default_factory=list, compare=False)

    _TRANSIENT = ("warnings",)
    _JSON_COLUMNS = ("tags", "mounted", "size_changed", "filesystems")

    def _fields(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in self._TRANSIENT}

    def to_row(self) -> dict:
        row = self._fields()
        for k in self._JSON_COLUMNS:
            row[k] = None if row[k] is None else json.dumps(row[k])
        for k in ("host", "source"):
            if is_raw(row[k]):
                row[k] = os.fsencode(row[k])  # a BLOB: the exact bytes
        return row

    @classmethod
    def from_row(cls, row: dict) -> SnapshotRecord:
        row = dict(row)
        for k in cls._JSON_COLUMNS:
            if row.get(k) is not None:
                row[k] = json.loads(row[k])
        for k in ("host", "source"):
            if isinstance(row[k], bytes):
                row[k] = os.fsdecode(row[k])
        return cls(**row)

    def to_json(self) -> dict:
        """The record as strict JSON-ready data (names that are not UTF-8: see rawnames)."""
        d = self._fields()
        d["tags"] = list(self.tags)
        return escape(d)

    def file_bytes(self) -> bytes:
        """The record file: its JSON (``to_json``) with ``checksum``, the blake3 of that JSON
        without it (sorted keys), so that any change to the file is detected when it is read
        (``maintenance.parse_record``)."""
        d = self.to_json()
        d["checksum"] = record_checksum(d)
        return json.dumps(d, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, d: dict) -> SnapshotRecord:
        """A record from its JSON form; unknown keys are ignored. Raises ValueError or
        TypeError for a malformed one."""
        if not isinstance(d, dict):
            raise TypeError("a snapshot record is a JSON object")
        d = unescape(d)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k not in cls._TRANSIENT})


def record_checksum(d: dict) -> str:
    """blake3 (hex) of a record's JSON object without its ``checksum`` key, keys sorted."""
    body = {k: v for k, v in d.items() if k != "checksum"}
    return content_id(json.dumps(body, sort_keys=True).encode()).hex()


def record_file(crypto: Crypto, record: SnapshotRecord) -> tuple[str, bytes]:
    """The name and bytes of ``record``'s file (sealed in an encrypted repository)."""
    name = f"snapshots/{record.id}.json"
    return name, crypto.seal(name.encode(), record.file_bytes())
