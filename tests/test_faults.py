"""Fault injection on the command line: SIGKILL at random moments, two writers on one folder, a
full disk. Every test runs `controlnet` in child processes, as a user's shell would.

What must hold: the output folder only ever holds complete files (the last checkpoint or the new
one, never a torn one); a resumed run ends with the uninterrupted run's controls, bit for bit
(float64); a second command on a busy folder refuses at once and writes nothing, and a lock file
left by a killed command blocks nothing; a write that fails for lack of space names its file and
leaves the previous result as it was.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import controlnet as cn
from controlnet_cli import app as cli
from processes import wait_for_file
from controlnet.atomic import TEMP_PREFIX
from controlnet_cli.lock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# Small and float64: each child spends most of its time starting (imports, one compile).
RUN = ["train", "--problem", "ring", "--samples", "32", "--layers", "4", "--iters", "600",
       "--batch-size", "8", "--float64", "--quiet"]
TINY = ["train", "--problem", "ring", "--samples", "8", "--layers", "2", "--iters", "2", "--quiet"]


def child(argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "controlnet_cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def controls(d):
    with np.load(d / "controls.npz") as z:
        return {k: z[k] for k in z.files}


def files(d):
    """Name -> bytes of every file in ``d``: not the lock, nor the temporary files of a write in
    progress (a running command's, which come and go under random names)."""
    out = {}
    for p in sorted(d.iterdir()):
        if p.name == LOCK_NAME or p.name.startswith(TEMP_PREFIX):
            continue
        try:
            out[p.name] = p.read_bytes()
        except FileNotFoundError:  # renamed away between listing and reading
            continue
    return out


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(d, pid, host=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / LOCK_NAME).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                                           "started": time.time(), "command": "train"}))


# -- two writers on one folder --------------------------------------------------------------------
def test_a_second_command_on_a_busy_folder_refuses_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    first = child([a if a != "600" else "100000" for a in RUN] + ["--checkpoint-every", "100", "--out", out])
    try:
        # the first holds the lock and is training
        wait_for_file(out / "checkpoint.npz", first, what="checkpoint")
        before = files(out)
        code = cli.main([str(a) for a in TINY + ["--out", out]])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by another controlnet process (pid {first.pid}" in err, err
        assert err.count("\n") == 1
        assert set(files(out)) <= set(before) | {"checkpoint.npz"}, "the refused command wrote nothing"
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, stderr
    assert not (out / LOCK_NAME).exists(), "the first command released its lock"
    assert cn.Result.load(out).status == "interrupted"


def test_a_lock_file_left_by_a_killed_command_is_no_lock(tmp_path, capsys):
    """The lock is the kernel's flock, not the file: a file left by a killed holder does not
    block, even when its pid now belongs to another live process (pids are reused). Taking the
    lock removes the library's temporary files and no file of the user's."""
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(out, sleeper.pid)
        (out / "notes.tmp").write_text("mine")
        (out / f"{TEMP_PREFIX}abc123.checkpoint.npz").write_bytes(b"half a file")  # a killed writer's
        assert cli.main([str(a) for a in TINY + ["--out", out]]) == 0
        assert f"took over the lock of pid {sleeper.pid}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (out / LOCK_NAME).exists() and not list(out.glob(TEMP_PREFIX + "*"))
    assert (out / "notes.tmp").read_text() == "mine" and cn.Result.load(out).info["iterations"] == 2
    write_lock(out, dead_pid())
    assert cli.main([str(a) for a in TINY + ["--out", out, "--overwrite"]]) == 0
    (out / LOCK_NAME).write_text("")  # torn: killed between creating and writing it
    assert cli.main([str(a) for a in TINY + ["--out", out, "--overwrite"]]) == 0
    assert not (out / LOCK_NAME).exists() and (out / "notes.tmp").read_text() == "mine"


# -- a full disk ----------------------------------------------------------------------------------
def limited_child(argv, limit):
    """``controlnet argv`` in a child whose files may not grow past ``limit`` bytes (RLIMIT_FSIZE):
    past it a write fails with EFBIG, as on a full disk, instead of killing the process
    (SIGXFSZ ignored). Set in the child itself: no ``preexec_fn`` fork of this JAX process."""
    code = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "sys.argv = ['controlnet'] + sys.argv[1:]; runpy.run_module('controlnet_cli', run_name='__main__')")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def test_a_write_that_fails_for_lack_of_space_names_the_file_and_keeps_the_old_result(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([str(a) for a in TINY + ["--out", out]]) == 0
    capsys.readouterr()
    before = files(out)
    proc = limited_child([a if a != "2" else "3" for a in TINY] + ["--out", out, "--overwrite"], 1024)
    _, stderr = proc.communicate(timeout=300)
    lines = stderr.strip().split("\n")
    assert proc.returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("controlnet: error: ") and "Traceback" not in stderr
    assert f"cannot write {out}/" in lines[0] and "File too large" in lines[0], lines[0]
    print(lines[0])
    assert files(out) == before, "every file of the previous result is as it was"
    assert not list(out.glob(TEMP_PREFIX + "*")) and not (out / LOCK_NAME).exists()
    assert cn.Result.load(out).info["iterations"] == 2


def test_a_failed_write_replaces_no_file(tmp_path):
    """Result.save writes its three files as one (atomic_write_all): if the second fails, the first
    is not replaced either."""
    import errno

    a, b = tmp_path / "a.npz", tmp_path / "b.json"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")

    def full(f):
        f.write(b"par")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"cannot write {b}: No space left on device"):
        cn.io.atomic_write_all({a: lambda f: f.write(b"new a"), b: full})
    assert a.read_bytes() == b"old a" and b.read_bytes() == b"old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.json"]


# -- SIGKILL at random moments --------------------------------------------------------------------
def _assert_complete(out):
    """Every file under its real name is whole: the checkpoint and the result load."""
    if (out / "checkpoint.npz").exists():
        cn.io.checkpoint_info(out / "checkpoint.npz")  # raises on a torn file
    if (out / "result.json").exists():
        cn.Result.load(out)  # checks the digests of controls.npz and history.npz


#: The killed run: long enough (about 12 s of training after about 6 s of start-up, 2,000
#: checkpoints) that random kills land in start-up, in training and in checkpoint writes.
LONG = [a if a != "600" else "20000" for a in RUN] + ["--checkpoint-every", "10"]


@pytest.fixture(scope="module")
def uninterrupted_long(tmp_path_factory):
    d = tmp_path_factory.mktemp("uninterrupted_long")
    assert cli.main([str(a) for a in LONG + ["--out", d]]) == 0
    return d


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_controls(uninterrupted_long, tmp_path,
                                                                                 seed):
    """12 SIGKILLs per seed (24 in all), each at a random moment from start-up to the end of
    training, of a checkpointing run that is resumed after every kill. After each kill the
    folder must hold only complete files; every run that reaches its end (then a new folder
    starts) must end with the uninterrupted run's controls, bit for bit."""
    rng = random.Random(seed)
    runs, kills, in_training, torn, equal = 0, 0, 0, 0, 0
    out = tmp_path / "run0"

    def finished_equal(d):
        a, b = controls(d), controls(uninterrupted_long)
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    for _ in range(40):
        if kills == 12:
            break
        resume = (out / "checkpoint.npz").exists()
        before = cn.io.checkpoint_info(out / "checkpoint.npz")["iteration"] if resume else 0
        proc = child(LONG + (["--resume", out] if resume else ["--out", out]))
        time.sleep(rng.uniform(1.0, 12.0))
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, stderr = proc.communicate(timeout=120)
        try:
            _assert_complete(out)
        except ValueError:
            torn += 1
            continue
        if (out / "checkpoint.npz").exists():
            in_training += killed and cn.io.checkpoint_info(out / "checkpoint.npz")["iteration"] > before
        if not killed:  # the run reached its end
            assert proc.returncode == 0, stderr
            equal += finished_equal(out)
            runs += 1
            out = tmp_path / f"run{runs}"
    proc = child(LONG + (["--resume", out] if (out / "checkpoint.npz").exists() else ["--out", out]))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    equal += finished_equal(out)
    runs += 1
    print(f"seed {seed}: {kills} kills ({in_training} after training had started), {torn} torn files, "
          f"{equal} of {runs} resumed runs bitwise equal to the uninterrupted run")
    assert kills == 12 and torn == 0 and equal == runs
    assert in_training >= 3, f"only {in_training} kills came after training had started"
