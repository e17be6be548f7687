"""Names that are not UTF-8 (a path the OS accepts may hold any byte but NUL), carried losslessly.

Inside diskvault a path is a ``str`` as Python gives it (``os.fsdecode``: each byte that is not
UTF-8 becomes a lone surrogate, ``surrogateescape``), so ``os.fsencode`` gives the exact bytes
back. JSON (record files, ``--json``) holds such a string the way restic holds a
``link_target`` that is not UTF-8: field ``X`` is readable text, each undecodable byte replaced
by U+FFFD, and field ``X_raw`` beside it holds the exact bytes, base64 (standard alphabet, with
padding). ``X_raw`` is present only when the name is not UTF-8. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import os


def is_raw(text: str) -> bool:
    """True when ``text`` holds undecodable bytes (surrogates), i.e. is not valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def readable(text: str) -> str:
    """``text`` with every undecodable byte shown as U+FFFD (for humans and JSON)."""
    return os.fsencode(text).decode("utf-8", "replace") if is_raw(text) else text


def escape(obj: object) -> object:
    """A copy of ``obj`` (dicts, lists, scalars) fit for strict JSON: a string value ``X`` that
    is not UTF-8 becomes readable text plus ``X_raw`` (base64 of the exact bytes); strings in
    lists are made readable (lists of names carry no raw form)."""
    if isinstance(obj, dict):
        out: dict = {}
        for key, value in obj.items():
            if isinstance(value, str) and is_raw(value):
                out[key] = readable(value)
                out[f"{key}_raw"] = base64.b64encode(os.fsencode(value)).decode("ascii")
            else:
                out[key] = escape(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [escape(v) for v in obj]
    if isinstance(obj, str):
        return readable(obj)
    return obj


def unescape(obj: dict) -> dict:
    """The inverse of ``escape`` for one dict: each ``X_raw`` replaces ``X`` (exact bytes,
    ``os.fsdecode``d) and is dropped. Raises ValueError for an ``X_raw`` that is not base64."""
    out = dict(obj)
    for key in [k for k in obj if isinstance(k, str) and k.endswith("_raw")]:
        raw = out.pop(key)
        if not isinstance(raw, str):
            raise ValueError(f"{key} is not a base64 string")
        out[key.removesuffix("_raw")] = os.fsdecode(base64.b64decode(raw, validate=True))
    return out
