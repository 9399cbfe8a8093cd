"""Helpers for the tests that run `controlnet` (or a part of it) in child processes."""

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: A child's environment: this checkout's packages and these helpers importable; one BLAS thread
#: (a child that forks must not have others).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def wait_for_file(path, proc, timeout=300.0, what="file"):
    """Wait until ``path`` exists while ``proc`` runs; fail if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.02)


def wait_for(path: Path, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path} within {timeout:g} s")
        time.sleep(0.02)


# -- the folder lock, taken by a child --------------------------------------------------------------
def lock_child(out: Path, marks: Path, pause: bool = False):
    """A child that imports the lock, touches ``marks/<pid>.ready`` and waits for
    ``marks/<pid>.start`` (see :func:`start`: children start up together, imports are slow), then
    takes ``out``'s folder lock (``controlnet_cli.lock.output_lock``), touches
    ``marks/<pid>.holds``, waits for ``marks/<pid>.release``, lets go and touches
    ``marks/<pid>.released``; refused, it prints the error and exits with 2. With ``pause`` its
    first ``flock`` waits, after the lock file is open, until ``marks/go`` exists (it touches
    ``marks/<pid>.paused`` there): the injected pause at the critical point."""
    return subprocess.Popen([sys.executable, "-c", "import processes; processes.take_lock()", str(out), str(marks),
                             "pause" if pause else "no-pause"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def start(proc, marks: Path):
    """Let the :func:`lock_child` ``proc`` go on to take the lock, once it is ready."""
    wait_for_file(marks / f"{proc.pid}.ready", proc, what="child ready")
    (marks / f"{proc.pid}.start").touch()


def take_lock():
    """The body of :func:`lock_child`."""
    import fcntl

    out, marks, pause = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "pause"
    me = os.getpid()
    flock = fcntl.flock

    def paused_flock(fd, op):
        if pause and op & fcntl.LOCK_EX and not (marks / f"{me}.paused").exists():
            (marks / f"{me}.paused").touch()
            wait_for(marks / "go")
        return flock(fd, op)

    fcntl.flock = paused_flock
    from controlnet_cli.arguments import UsageError
    from controlnet_cli.lock import output_lock

    (marks / f"{me}.ready").touch()
    wait_for(marks / f"{me}.start")
    try:
        with output_lock(out, "test"):
            (marks / f"{me}.holds").touch()
            wait_for(marks / f"{me}.release")
    except UsageError as e:
        print(e)
        sys.exit(2)
    (marks / f"{me}.released").touch()


# -- a result save killed before each of its file operations ----------------------------------------
#: The os functions through which a save creates, writes, flushes, renames and removes files.
FILE_OPERATIONS = ("open", "write", "fsync", "close", "replace", "rename", "unlink", "mkdir")


def count_operations(k: int, on_k, patch=setattr):
    """Wrap :data:`FILE_OPERATIONS` of ``os`` (with ``patch(os, name, wrapper)``: pytest's
    ``monkeypatch.setattr`` undoes it) so that the ``k``-th call (from 0) runs ``on_k(name, fn,
    args)`` first; returns a function giving the number of calls so far."""
    calls = [0]

    def wrap(name, fn):
        def operation(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k + 1:
                on_k(name, fn, args)
            return fn(*args, **kwargs)
        return operation

    for name in FILE_OPERATIONS:
        patch(os, name, wrap(name, getattr(os, name)))
    return lambda: calls[0]


def killed_save(result, directory, k: int) -> bool:
    """Save ``result`` into ``directory`` in a forked child that is SIGKILLed just before its
    ``k``-th file operation (a write is cut in half first); whether the kill came."""
    pid = os.fork()
    if pid == 0:
        def kill(name, fn, args):
            if name == "write":
                fn(args[0], bytes(args[1][: len(args[1]) // 2]))
            os.kill(os.getpid(), signal.SIGKILL)

        code = 0
        try:
            count_operations(k, kill)
            result.save(directory)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        raise AssertionError(f"the save failed (exit status {os.WEXITSTATUS(status)}) instead of being killed")
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def kill_every_operation():
    """Child body: in ``sys.argv[1]``, for k = 0, 1, ...: save result A into ``k<k>/`` (with a
    user's ``notes.tmp`` beside it), then result B killed before its k-th file operation, until
    a save of B runs to its end. Prints ``{"operations": n}``: B's save makes n operations."""
    root = Path(sys.argv[1])
    old, new = old_result(), new_result()
    for k in range(1000):
        d = root / f"k{k}"
        old.save(d)
        (d / "notes.tmp").write_text("mine")
        if not killed_save(new, d, k):
            print(json.dumps({"operations": k}))
            return
    raise AssertionError("a save of more than 1000 file operations")


def _result(scale: float, iterations: int, status: str, run: str):
    import numpy as np

    import controlnet as cn

    theta = {"W": scale * np.arange(24.0).reshape(4, 2, 3), "b": np.full((4, 2), scale)}
    controls = cn.Controls(theta, {"A": scale * np.ones((3, 2)), "c": np.zeros(2)})
    history = {"loss": 1.0 / np.arange(1.0, iterations + 1), "accuracy": np.linspace(0.5, 1.0, iterations)}
    return cn.Result(controls, history, status, {"iterations": iterations, "loss": 1.0 / iterations},
                     spec={"run": run, "seed": 0})


def old_result():
    """The result a folder holds before a save (3 iterations, ``spec["run"] == "old"``)."""
    return _result(1.0, 3, "max_iters", "old")


def new_result():
    """The result saved over it (5 iterations, other controls, ``spec["run"] == "new"``)."""
    return _result(2.0, 5, "converged", "new")
