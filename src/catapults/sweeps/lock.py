"""The lock of a sweep directory, so that two sweeps never write the same directory at once."""

from __future__ import annotations

import os
from pathlib import Path

from catapults.config import ConfigError

if os.name == "nt":  # pragma: no cover
    import msvcrt
else:
    import fcntl


class SweepLock:
    """``DIR/.sweep.lock``: an exclusive lock held by the OS (``flock``; ``msvcrt`` on Windows)
    while a sweep writes the directory, with the holder's pid in the file for the message. The
    OS drops the lock when its process dies, so the file a killed sweep leaves is taken over."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = sweep_dir / ".sweep.lock"
        self.fd: int | None = None

    def __enter__(self) -> SweepLock:
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not try_lock(fd):
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(f"{self.path.parent}: the sweep directory is in use by another "
                                  f"sweep (process {holder}); wait for it, or choose another --out")
            try:  # the holder may have removed the file between our open and lock: retry
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self.fd = fd
            return self
        raise ConfigError(f"{self.path}: could not take the sweep lock")

    def __exit__(self, *exc) -> None:
        try:
            self.path.unlink(missing_ok=True)  # first: a process waiting on it sees a new inode
        except OSError:  # pragma: no cover - Windows cannot remove an open file
            pass
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False if another process holds it."""
    try:
        if os.name == "nt":  # pragma: no cover
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
