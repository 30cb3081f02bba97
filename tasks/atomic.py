"""The one way files are written: a temporary file in the same folder, ``fsync``, then rename.

A reader (or a rerun after a kill, a full disk or a power cut) sees either the old file or the
new one, never a part of either; a failed write removes its temporary file, and one left by a killed
process is removed by the next write of the same file. Used
for results, manifests, checkpoints and every cache.
"""
from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temporary_name(path: Path) -> Path:
    """A hidden temporary file beside ``path``, unique per process and call (concurrent writers)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file, which is ``fsync``-ed and
    renamed over ``path``; then the folder is ``fsync``-ed so the rename survives a power cut.

    Args:
        path: the file to write (its folder must exist).
        write: writes the contents to the binary file object it is given, e.g.
            ``lambda f: torch.save(obj, f)`` or ``lambda f: np.save(f, array)``.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``); ``path`` keeps its previous contents and the
            temporary file is removed. Any other exception (or an interrupt) inside ``write``
            also removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_folder(path.parent)


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of ``path`` left by writers that were killed (their process is gone);
    those of live writers (a concurrent run writing the same manifest) are kept."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                tmp.unlink()
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode()))
