"""One writer per run folder: ``with RunLock(folder): ...``.

Two processes writing one run folder lose work silently: each checkpoint save clears the other's
temporary folders, ``metrics.jsonl`` interleaves two curves, the last writer's checkpoint wins.
:class:`RunLock` makes the second writer fail at once, with one error naming the holder.

How: the lock is ``run.lock`` in the folder, held with ``fcntl.flock`` (an exclusive, non-blocking
lock on the open file) for as long as the run lasts, and holding the holder's pid, host and start
time for the error message. ``flock`` rather than a file created with ``O_CREAT | O_EXCL``
because the kernel releases it when its process dies, however it dies (``kill -9``, a power cut
on NFS once the server's lease expires): a lock left by a dead process is never mistaken for a
live one — no pid guessing, which breaks on pid reuse and cannot see other hosts — and is taken
over with a warning naming the dead holder. A file that still holds a holder's details while no
process holds its lock is such a leftover. Releasing removes the file, then drops the lock; a
process that opened the file just before it was removed notices (the path no longer names the
file it locked) and tries again, so two processes never both hold a lock.

Without ``fcntl`` (Windows) the file is created with ``O_CREAT | O_EXCL`` instead: a second
writer gets the same error, but a leftover of a crashed run must be removed by hand (the error
says so).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = "run.lock"

__all__ = ["LOCK_FILE", "RunLock", "RunLocked"]


class RunLocked(FileExistsError):
    """Another process writes to this run folder (the message names it and how to proceed)."""


def _describe(info: dict) -> str:
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"


def _read_info(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


class RunLock:
    """An exclusive lock on a run folder (see the module docstring); a context manager.

    ``purpose`` (e.g. ``"train"``) goes into the lock file and the error a second writer gets.
    """

    def __init__(self, folder: str | Path, purpose: str = "train"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.purpose = purpose
        self._fd: int | None = None

    def _info(self) -> dict:
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "purpose": self.purpose}

    def _refuse(self, holder: dict) -> RunLocked:
        return RunLocked(
            f"run folder {self.folder} is in use by another difflab {holder.get('purpose', 'process')} "
            f"({_describe(holder)}): wait for it to finish or stop it, or write to another folder (--out DIR). "
            + ("" if fcntl is not None else f"If that process is gone, delete {self.path}.")
        )

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        if fcntl is None:
            return self._acquire_exclusive_create()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_info(fd)
                os.close(fd)
                raise self._refuse(holder) from None
            except OSError as err:  # a file system without locks (some FUSE and network mounts)
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                warnings.warn(f"{self.path}: this file system cannot lock files ({err.strerror}); a second "
                              "process writing to this run folder will not be stopped", stacklevel=2)
                break
            except BaseException:
                os.close(fd)
                raise
            try:  # the holder before us may have removed the file between our open and our lock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        leftover = _read_info(fd)
        if leftover:
            warnings.warn(f"{self.path}: taking over the lock of a run that ended without releasing it "
                          f"({_describe(leftover)}; that process no longer holds it)", stacklevel=2)
        self._write(fd)
        return self

    def _acquire_exclusive_create(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(self.path.read_text())
            except (OSError, ValueError):
                holder = {}
            raise self._refuse(holder if isinstance(holder, dict) else {}) from None
        self._write(fd)
        return self

    def _write(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(self._info()) + "\n").encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(OSError):  # left behind: the next run takes it over (no process holds its lock)
                os.unlink(self.path)
        finally:
            os.close(fd)  # drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
