"""Files that appear whole or not at all.

A file is written under a temporary name beside its destination, flushed to disk, and renamed
over it with ``os.replace`` (atomic on POSIX file systems): a reader finds the old file or the
new one, never a part of either. Temporary names start with :data:`TEMP_PREFIX`; the library's
clean-up (:func:`controlnet.io.tidy`) removes such files and never any other, so a user's own
``notes.tmp`` is safe. Files are created with mode ``0o666`` less the process umask, as
``open()`` creates them (``0o644`` under the usual umask ``022``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["TEMP_PREFIX", "temp_path", "write_new", "sync_dir", "atomic_write",
           "atomic_write_all"]

#: The first characters of every temporary file the library creates (and may remove).
TEMP_PREFIX = ".controlnet-tmp-"


def temp_path(path: Path, tag: str | None = None) -> Path:
    """``<dir>/.controlnet-tmp-<tag>.<name>`` beside ``path``; ``tag`` random unless given."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{tag or secrets.token_hex(8)}.{path.name}")


def _failed(e: OSError, shown: Path) -> OSError:
    """``e`` restated to name the file the user asked for, and that nothing was replaced."""
    if e.errno is None:
        return e
    return OSError(e.errno, f"cannot write {shown}: {e.strerror}; {shown.name} and the files "
                            "written with it were left as they were")


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)


def write_new(path: Path, data: bytes, shown: Path | None = None) -> None:
    """Create ``path`` (which must not exist) holding ``data``, flushed to disk.

    A failed write (no space left, a file-size limit) raises ``OSError`` naming ``shown`` (the
    file the user knows, default ``path``); the partial file stays for the caller to remove."""
    try:
        fd = _create(path)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        err = _failed(e, Path(shown or path))
        if err is e:
            raise
        raise err from e


def sync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries (its renames) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    A write that fails (no space left, a file-size limit) removes the temporary file and raises
    ``OSError`` naming ``path``; a file already at ``path`` is untouched either way."""
    atomic_write_all({Path(path): write})


def atomic_write_all(writers: dict) -> None:
    """Write several files as one: every ``write(file)`` of ``{path: write}`` goes to a temporary
    file first, and only when all of them are complete on disk are they renamed into place.

    If any write fails, every temporary file is removed and no file at any ``path`` changes (an
    ``OSError`` names the file that failed). The renames themselves take no space and cannot
    fail for lack of it; a process killed between two of them leaves some files replaced (a
    :class:`controlnet.io.Result` is saved by a scheme that survives that)."""
    done = []
    try:
        for path, write in writers.items():
            path = Path(path)
            tmp = temp_path(path)
            try:
                fd = _create(tmp)
                done.append((tmp, path))
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                err = _failed(e, path)
                if err is e:
                    raise
                raise err from e
        for tmp, path in done:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in done:
            with contextlib.suppress(OSError):  # best effort: the first error is the one to see
                os.unlink(tmp)
        raise
    for parent in {path.parent for _, path in done}:
        sync_dir(parent)
