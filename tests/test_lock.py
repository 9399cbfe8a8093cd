"""The folder lock is a kernel lock (``flock``): never held twice, freed when its holder dies.

Processes race for it with a pause injected at the critical point: a child's first ``flock``
waits, after it opened the lock file, until the test lets it go (``processes.lock_child``).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from controlnet_cli.arguments import UsageError
from controlnet_cli.lock import LOCK_NAME, output_lock
from processes import lock_child, start, wait_for_file


def refused(proc, holder) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert f"is in use by another controlnet process (pid {holder.pid} " in out, out
    return out


def finish(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def test_the_holder_killed_the_waiting_contender_takes_the_lock(tmp_path):
    out, marks = tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    a, b, c, d = (lock_child(out, marks, pause=name == "b") for name in "abcd")
    try:
        start(a, marks)
        wait_for_file(marks / f"{a.pid}.holds", a, what="lock taken")
        start(b, marks)  # opens the lock file while a holds it, then pauses
        wait_for_file(marks / f"{b.pid}.paused", b, what="pause")
        start(c, marks)
        refused(c, holder=a)  # a holds it, b waits: exactly one holder
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=60)
        assert (out / LOCK_NAME).exists(), "killed: its file stays, its lock goes with it"
        (marks / "go").touch()
        wait_for_file(marks / f"{b.pid}.holds", b, what="lock taken after the kill")
        start(d, marks)
        refused(d, holder=b)
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == b.pid
        (marks / f"{b.pid}.release").touch()
        _, err = b.communicate(timeout=60)
        assert b.returncode == 0, err
        assert f"took over the lock of pid {a.pid}, which ended without releasing it" in err
        assert not (out / LOCK_NAME).exists()
    finally:
        finish(a, b, c, d)


def test_a_contender_that_locked_the_file_its_holder_removed_tries_again(tmp_path):
    """b opens the lock file while a holds it; a lets go (removing the file) and c takes a new
    one; only then does b lock the file it opened. b must see that the file is gone and refuse:
    a lock on a removed file would make b and c both holders."""
    out, marks = tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    a, b, c = (lock_child(out, marks, pause=name == "b") for name in "abc")
    try:
        start(a, marks)
        wait_for_file(marks / f"{a.pid}.holds", a, what="lock taken")
        start(b, marks)
        wait_for_file(marks / f"{b.pid}.paused", b, what="pause")
        (marks / f"{a.pid}.release").touch()
        a.communicate(timeout=60)
        assert a.returncode == 0 and (marks / f"{a.pid}.released").exists()
        start(c, marks)
        wait_for_file(marks / f"{c.pid}.holds", c, what="lock taken")
        (marks / "go").touch()
        refused(b, holder=c)
        assert not (marks / f"{b.pid}.holds").exists()
        (marks / f"{c.pid}.release").touch()
        c.communicate(timeout=60)
        assert c.returncode == 0
    finally:
        finish(a, b, c)


def test_one_process_cannot_take_its_own_lock_twice(tmp_path):
    with output_lock(tmp_path, "first") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(UsageError, match=f"in use by another controlnet process \\(pid {os.getpid()} "):
            with output_lock(tmp_path, "second"):
                pass
    assert not (tmp_path / LOCK_NAME).exists()
    with output_lock(tmp_path, "again"):  # released: free
        pass


def test_taking_the_lock_removes_the_library_files_only(tmp_path, capsys):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "h", "pid": 123456789, "started": time.time()}))
    user = ["notes.tmp", ".notes.tmp", ".checkpoint.npz.abc123.tmp"]
    for name in user:
        (tmp_path / name).write_text("mine")
    (tmp_path / ".controlnet-tmp-1f2e.checkpoint.npz").write_bytes(b"half a file")
    with output_lock(tmp_path, "train"):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(user + [LOCK_NAME])
    assert "took over the lock of pid 123456789" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(user)
    assert all((tmp_path / n).read_text() == "mine" for n in user)


def test_the_lock_file_takes_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with output_lock(tmp_path) as lock:
            assert lock.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(previous)
