"""A cross-process file lock for one-time work in the cache (converting or assembling weights)."""

from __future__ import annotations

import os
from pathlib import Path


class file_lock:
    """Hold an exclusive lock on `path` (created if missing) for the `with` block.

    Two processes that prepare the same cached file wait for each other instead of both writing it;
    readers need no lock because finished files are renamed into place whole.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "file_lock":
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: the atomic rename still protects readers
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None
