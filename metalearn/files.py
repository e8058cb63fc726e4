"""File-system primitives shared by checkpoints, saved learners, run folders and reports.

* ``atomic_write``: a file is written beside its final path and renamed into place, so a reader sees
  the old file or the new one, never a part of one.
* ``locked``: an advisory ``flock`` on a lock file, shared (readers) or exclusive (writers). The kernel
  drops it when its holder exits, so a crash never leaves a stale lock; the lock file names its holder
  (pid, host) and the last holder removes it.
* ``replace_dir``: put a completely written folder where another one was.

Everything is created with ``open``/``mkdir``'s default modes, so the process umask applies (0644
files and 0755 folders under umask 022), unlike ``tempfile``'s private 0600/0700.
POSIX only (``fcntl``), as is the rest of the library's multi-process support.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import time
import uuid
from typing import Iterator, Optional, Union

__all__ = ["Locked", "atomic_write", "holder", "locked", "match_folder_mode", "new_temp_dir", "replace_dir", "sha256"]


class Locked(RuntimeError):
    """A lock that another live process holds (raised only by non-blocking ``locked``)."""


def _temp_name(path: str, kind: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str, data: Union[str, bytes], fsync: bool = False) -> None:
    """Write ``data`` (str as UTF-8, or bytes) to ``path`` via a temporary file and ``os.replace``.

    ``fsync=True`` also flushes the bytes to disk before the rename (checkpoints: a power cut then
    leaves the previous file, not an empty one).
    """
    tmp = _temp_name(path, "tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "xb") as f:
            f.write(payload)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def new_temp_dir(path: str) -> str:
    """An empty hidden folder beside ``path`` (same file system, so it can be renamed onto ``path``)."""
    tmp = _temp_name(path, "tmp")
    os.mkdir(tmp)
    return tmp


def replace_dir(src: str, dst: str) -> None:
    """Move the complete folder ``src`` to ``dst``, replacing ``dst``; call it under ``locked`` for ``dst``.

    A folder cannot be renamed over a non-empty one, so ``dst`` is first renamed aside, then deleted.
    """
    if not os.path.exists(dst):
        os.rename(src, dst)
        return
    old = _temp_name(dst, "old")
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def match_folder_mode(folder: str) -> None:
    """Give everything under ``folder`` the permissions its own ``mkdir`` got (the umask's), files without x.

    Some writers (safetensors) create private 0600 files; a saved folder should be as readable as any
    other file the user creates.
    """
    mode = stat.S_IMODE(os.stat(folder).st_mode)
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), mode)
        for name in names:
            os.chmod(os.path.join(root, name), mode & 0o666)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def holder(lock_path: str) -> dict:
    """What a lock file says about its holder: ``{"pid": ..., "host": ..., "since": ...}`` (or ``{}``)."""
    try:
        with open(lock_path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def locked(lock_path: str, shared: bool = False, blocking: bool = True,
           optional: bool = False) -> Iterator[Optional[int]]:
    """Hold an ``flock`` on ``lock_path`` (created if missing) for the ``with`` block.

    Args:
        shared: a shared (reader) lock; several may be held at once, never with an exclusive one.
        blocking: wait for the lock; else raise ``Locked`` at once, naming the holder when known.
        optional: if the lock file cannot be created (a read-only folder: nobody can write there
            either), go on without a lock instead of raising.

    The lock file may be removed by a holder that is the last one out, so after getting the lock we
    check that the path still names the locked file; if not, we try again on the new one.
    """
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            if optional and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                yield None
                return
            raise
        try:
            flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                raise Locked(lock_path) from None
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the last holder removed the file after we opened it
                os.close(fd)
                continue
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        break
    try:
        if not shared:
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        yield fd
    finally:
        try:  # the last holder out removes the file (an exclusive lock proves nobody else holds it)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                os.remove(lock_path)
        except OSError:
            pass
        os.close(fd)
