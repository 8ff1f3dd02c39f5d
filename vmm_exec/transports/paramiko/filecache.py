"""Files read on every connection, parsed once per version of the file.

Each new paramiko connection read ``~/.ssh/config`` and every known_hosts file
again, parsing every line (a host key per line: base64 and a key object each).
With 80 hosts that was most of a connection's CPU (benchmarks/README.md,
finding 6). A file is now parsed again only when
its identity changes (device, inode, size, modification time in nanoseconds),
which a ``stat`` tells; an edit by the operator is seen by the next connection,
as with the ``ssh`` binary.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import Callable, Dict, Generic, Optional, Tuple, TypeVar

__all__ = ["FileCache", "identity"]

T = TypeVar("T")
Identity = Tuple[int, int, int, int]


def identity(path: str) -> Optional[Identity]:
    """What changes when ``path`` is replaced or written; None if it is not a file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class FileCache(Generic[T]):
    """``load(path)`` kept per path while the file stays the same.

    A file written twice within the file system's timestamp granularity with
    the same size would be missed; ``ssh`` itself never re-reads within a
    connection, and the next different write is seen.
    """

    def __init__(self, load: Callable[[str], T], limit: int = 64) -> None:
        self._load = load
        self._limit = limit
        self._lock = threading.Lock()
        self._entries: Dict[str, Tuple[Identity, T]] = {}

    def get(self, path: str) -> Optional[T]:
        """The parsed file, or None when ``path`` is not a readable regular file."""
        before = identity(path)
        if before is None:
            return None
        with self._lock:
            entry = self._entries.get(path)
        if entry is not None and entry[0] == before:
            return entry[1]
        value = self._load(path)  # outside the lock: other files go on meanwhile
        if identity(path) == before:  # not changed while being read
            with self._lock:
                if len(self._entries) >= self._limit and path not in self._entries:
                    self._entries.pop(next(iter(self._entries)))
                self._entries[path] = (before, value)
        return value
