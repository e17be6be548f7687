"""Start writing a file range to disk early (Linux ``sync_file_range``), without waiting.

Restore calls ``start_writeback`` on each range of its target it
finishes, so dirty pages do not pile up for one long final fsync: the disk works while the
CPU goes on. Durability still comes from the caller's fsync; this only moves work earlier.
Where the call is missing (not Linux, no libc), it does nothing.
"""

from __future__ import annotations

import ctypes

SYNC_FILE_RANGE_WRITE = 2
_libc: ctypes.CDLL | bool | None = None


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to begin writeback of ``[offset, offset+length)`` of ``fd``; errors
    are left to the caller's fsync, which reports them."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
            _libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)
