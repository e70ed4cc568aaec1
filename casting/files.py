"""Files written so that a crash, a SIGKILL or a full disk never leaves half of one: atomic
writes (a temporary name in the same folder, fsync, rename, fsync of the folder), space
reserved before a large write, free space for error messages, checksums."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary file name beside ``path`` for a writer that needs a name (h5py,
    Keras ``save_weights``); on success the file is fsynced, renamed over ``path`` and the
    folder fsynced, so readers see the old file or the new one, never a part. On an error
    the temporary file is removed and ``path`` is untouched. ``suffix`` keeps an extension
    a writer insists on (``.weights.h5``)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.path.basename(path)}-{os.getpid()}{suffix}")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically (see atomic_path)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(raw)


def replace_dir(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the fully written folder ``staging`` at ``final`` (both on one file system): an
    existing ``final`` is renamed aside first and removed once the new one is in place,
    and the parent folder is fsynced. Readers see the old folder or the new one, whole."""
    staging, final = os.fspath(staging), os.fspath(final)
    parent = os.path.dirname(os.path.abspath(final))
    old = None
    if os.path.exists(final):
        old = os.path.join(parent, f".tmp-old-{os.path.basename(final)}-{os.getpid()}-"
                                   f"{time.time_ns()}")
        os.replace(final, old)
    os.replace(staging, final)
    fsync_dir(parent)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def free_space_text(path: str) -> str:
    """Free space of the file system holding ``path`` (or its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return "free space unknown"
    return f"{usage.free / 2**20:.0f} MiB free of {usage.total / 2**20:.0f} MiB"


def reserve_space(folder: str, nbytes: int) -> None:
    """Make sure ``nbytes`` can be written in ``folder``: allocate a file of that size and
    remove it. A full disk (or a file-size limit) then fails here with a clean OSError;
    HDF5 running out of space half-way through a weights file can crash the process."""
    path = os.path.join(folder, ".reserve")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(1, int(nbytes)))
    finally:
        os.close(fd)
        os.remove(path)


def reserve_space_for(folder: str, arrays) -> None:
    """:func:`reserve_space` for writing ``arrays`` (anything with a shape and a dtype:
    variables, NumPy arrays) into ``folder``, with room for file headers: 5% and 1 MiB."""
    import numpy as np

    nbytes = sum(int(np.prod(a.shape)) * np.dtype(getattr(a.dtype, "name", a.dtype)).itemsize
                 for a in arrays)
    reserve_space(folder, nbytes * 1.05 + (1 << 20))


def sha256_file(path: str) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: str) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename into it) to the disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["atomic_path", "write_atomic", "reserve_space", "reserve_space_for", "free_space_text",
           "sha256_file", "fsync_file", "fsync_dir"]
