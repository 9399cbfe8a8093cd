"""One writer per output folder: ``OUT/.controlnet.lock``.

A command that writes into ``OUT`` holds the lock for as long as it runs. The lock file appears
complete or not at all (written to a temporary file, then hard-linked to its name, which fails
if it exists), and holds the owner's host, process id and start time. A second command on the
same ``OUT`` finds it and refuses at once, naming the owner. A lock left by a process that no
longer runs (killed with SIGKILL, or a machine that went down) is stale: it is reclaimed, with a
note on stderr. Reclaiming renames the stale file away first, so of two commands reclaiming at
once only one can succeed. The holder of the lock removes the temporary files a killed
writer left in ``OUT``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from .arguments import UsageError

__all__ = ["LOCK_NAME", "output_lock", "read_lock"]

LOCK_NAME = ".controlnet.lock"


def read_lock(path: Path) -> dict | None:
    """The owner recorded in the lock at ``path``; ``None`` if there is none; ``{}`` if unreadable."""
    try:
        owner = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _alive(owner: dict) -> bool:
    """Whether the lock's owner still runs. A lock from another host is taken as live (its process
    cannot be asked from here); one without a readable pid as stale."""
    if owner.get("host") != socket.gethostname():
        return bool(owner)
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _try_create(lock: Path, text: str) -> bool:
    fd, tmp = tempfile.mkstemp(prefix=LOCK_NAME + ".", suffix=".tmp", dir=lock.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.link(tmp, lock)  # atomic, and fails if the lock exists
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


@contextlib.contextmanager
def output_lock(out: Path, command: str = "controlnet"):
    """Hold ``out/.controlnet.lock`` (``out`` created if missing) for the ``with`` block.

    Raises :class:`UsageError` if another live process holds it; reclaims a stale one.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "command": command}
    text = json.dumps(me)
    for _ in range(3):
        if _try_create(lock, text):
            break
        owner = read_lock(lock)
        if owner is None:  # released in between: try again
            continue
        if _alive(owner):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
            raise UsageError(f"{out} is in use by another controlnet process (pid {owner.get('pid')} on "
                             f"{owner.get('host')}, since {since}); wait for it to finish or pick another "
                             f"--out (if that process is gone, delete {lock})")
        stale = lock.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.rename(lock, stale)  # only one reclaimer wins
        except FileNotFoundError:
            continue
        os.unlink(stale)
        print(f"controlnet: reclaimed the stale lock of pid {owner.get('pid')} (no longer running) in {out}",
              file=sys.stderr)
    else:
        raise UsageError(f"could not take the lock {lock}; another process keeps taking it; pick another --out")
    # Whoever holds the lock owns the folder: a temporary file there is what a killed writer left
    # (controlnet.io.atomic_write_all writes ".<name>.<random>.tmp" beside each file).
    for tmp in out.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
    try:
        yield lock
    finally:
        if read_lock(lock) == me:
            os.unlink(lock)
