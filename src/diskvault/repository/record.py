"""A snapshot's record: the fields its record file (``snapshots/<id>.json``) and its catalog
row hold, the record file's bytes and checksum. Sealed in an encrypted repository
(``record_file``; crypto.py)."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from dataclasses import dataclass, field

from ..rawnames import escape, is_raw, unescape
from ..errors import DamagedData
from .crypto import PLAIN, Crypto
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


# --- reading a record file -------------------------------------------------------------------

_HEX = re.compile(r"^[0-9a-f]+$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
_TEXT_FIELDS = ("time", "host", "source")
# the figures of a record: every count it has beside its size (data_bytes, chunks, ...)
_COUNT_FIELDS = tuple(k for k, f in SnapshotRecord.__dataclass_fields__.items()
                      if type(f.default) is int and k != "size")


def record_id(name: str) -> str:
    """The snapshot id a record file is named after (``snapshots/<id>.json``)."""
    return name.rsplit("/", 1)[-1].removesuffix(".json")


def _is_text(v: object) -> bool:
    if not isinstance(v, str):
        return False
    try:
        v.encode()
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8 text
        return False
    return True


def parse_record(name: str, data: bytes, crypto: Crypto = PLAIN) -> SnapshotRecord:
    """The snapshot record in file ``name`` holding ``data``; raises DamagedData saying why
    it cannot be read: its authentication fails (encrypted), not UTF-8 JSON, a required field (id matching the file name, time,
    host, source, size, tags, tree) missing or of the wrong kind. Unknown fields are
    ignored (written by a newer diskvault), missing figures are 0."""
    data = crypto.open(name.encode(), data)
    try:
        d = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedData("it is not UTF-8 text") from None
    except ValueError as exc:
        raise DamagedData(f"it is not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise DamagedData("it is not a JSON object")
    sid = d.get("id")
    if sid != record_id(name):
        raise DamagedData("its id does not match its file name")
    for k in _TEXT_FIELDS:
        if not _is_text(d.get(k)):
            raise DamagedData(f"its {k} is missing or not UTF-8 text")
    tree = d.get("tree")
    if not isinstance(tree, str) or len(tree) != 64 or not _HEX.match(tree):
        raise DamagedData("its tree root is missing or not a 64-digit hex id")
    for k in ("size", *_COUNT_FIELDS):
        v = d.get(k, 0)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 63:
            raise DamagedData(f"its {k} is not a count")
    tags = d.get("tags")
    if not isinstance(tags, list) or not all(_is_text(t) for t in tags):
        raise DamagedData("its tags are not a list of UTF-8 texts")
    duration = d.get("duration", 0.0)
    if not isinstance(duration, (int, float)) or isinstance(duration, bool):
        raise DamagedData("its duration is not a number")
    if "checksum" in d:
        if d["checksum"] != record_checksum(d):
            raise DamagedData("its checksum does not match its content (it was changed after it was written)")
    elif crypto.encrypted or d["id"] != content_id(json.dumps({**d, "id": ""}, sort_keys=True).encode()).hex()[:32]:
        raise DamagedData("its content does not match its id (it was changed after it was written)")
    try:
        datetime.fromisoformat(d["time"].replace("Z", "+00:00"))
    except ValueError:
        raise DamagedData("its time is not an ISO 8601 date and time") from None
    try:
        return SnapshotRecord.from_json(d)
    except (TypeError, ValueError) as exc:
        raise DamagedData(f"it does not describe a snapshot ({exc})") from None
