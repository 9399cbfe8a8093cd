"""One writer per output folder: a kernel lock on ``OUT/.controlnet.lock``.

A command that writes into ``OUT`` holds an exclusive ``flock`` on the open file
``OUT/.controlnet.lock`` for as long as it runs. The kernel releases it when the process ends,
however it ends (SIGKILL, a crash): there is no stale lock to detect and none to reclaim, so two
commands can never both hold it. The file records its holder (host, process id, start time,
command), so that a second command refuses at once and names it.

The holder removes the file when it is done, while it still holds the lock. A command that
opened the file just before that, and then obtained the lock on the removed file, sees that
``OUT/.controlnet.lock`` is no longer the file it locked (another inode, or none) and tries again.

Whoever holds the lock owns the folder: on taking it, :func:`controlnet.io.tidy` completes a
result save that was interrupted after its commit and removes the library's own temporary files
(``.controlnet-tmp-*``), and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from controlnet.io import tidy

from .arguments import UsageError

__all__ = ["LOCK_NAME", "output_lock", "read_lock", "check_free"]

LOCK_NAME = ".controlnet.lock"


def read_lock(path: Path) -> dict | None:
    """The holder recorded in the lock at ``path``; ``None`` if there is none; ``{}`` if unreadable."""
    try:
        owner = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _is_open_file(fd: int, lock: Path) -> bool:
    """Whether ``lock`` is still the file open as ``fd`` (not removed, nor removed and re-created)."""
    try:
        st = os.stat(lock)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _busy(out: Path, lock: Path) -> UsageError:
    owner = read_lock(lock) or {}
    if "pid" not in owner:  # the holder has the lock but has not written its name yet
        return UsageError(f"{out} is in use by another controlnet process (starting); wait for it to "
                          "finish or pick another --out")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return UsageError(f"{out} is in use by another controlnet process (pid {owner.get('pid')} on "
                      f"{owner.get('host')}, since {since}); wait for it to finish or pick another --out")


def _acquire(out: Path, lock: Path) -> int:
    """An open descriptor of ``lock`` holding its exclusive flock; :class:`UsageError` if held."""
    for _ in range(20):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(out, lock) from None
        except BaseException:
            os.close(fd)
            raise
        if _is_open_file(fd, lock):
            return fd
        os.close(fd)  # the previous holder removed this file as it let go: open the new one
    raise UsageError(f"could not take the lock {lock}; other processes keep taking it; pick another --out")


def check_free(out: Path) -> None:
    """Raise :class:`UsageError`, naming the holder, if another process holds the lock of ``out``
    (a probe that creates nothing: the folder's other checks come after it, so a busy folder is
    reported as busy rather than by what its holder is writing)."""
    lock = Path(out) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(Path(out), lock) from None
    finally:
        os.close(fd)  # closing releases the probe's shared lock


@contextlib.contextmanager
def output_lock(out: Path, command: str = "controlnet"):
    """Hold the lock of ``out`` (created if missing) for the ``with`` block; yields its path.

    Raises :class:`UsageError`, naming the holder, if another process holds it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    fd = _acquire(out, lock)
    try:
        before = read_lock(lock)
        if before and "pid" in before:  # a holder that was killed leaves its file, not its lock
            print(f"controlnet: took over the lock of pid {before['pid']}, which ended without "
                  f"releasing it, in {out}", file=sys.stderr)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        tidy(out)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # still held: nobody can have taken this file in between
        os.close(fd)
