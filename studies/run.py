"""One run of a study: train a run spec once and write its folder all-or-nothing; load it back.

Layout of a study folder ``OUT``::

    OUT/runs/<hash>/          one run (hash: :func:`studies.spec_hash`), either finished:
        result.json           status, summary numbers, the whole spec and the versions
        controls.npz, history.npz
    or failed:
        failed.json           the error message and traceback, the spec and the versions
    OUT/runs/.<hash>.lock     the run's lock file (``fcntl.flock``)
    OUT/journal.jsonl         one line per event: started, finished, failed, skipped

A run is trained into a temporary folder beside its final place (named
``.controlnet-tmp-<hash>-...``) and renamed to ``runs/<hash>`` when complete, so ``runs/<hash>``
is either absent, a whole result, or a whole failure record. While a process runs spec ``s`` it
holds an exclusive ``flock`` on ``runs/.<hash>.lock``: a second process asking for the same run
*waits* for it, then finds it finished and skips it (so two sweeps sharing a folder never train
the same run at once, and both end with every run). The kernel releases the lock when its
holder dies; the temporary folders a killed holder left are then removed by the next holder
(only folders with the library's prefix and that run's hash).

A finished run (``result.json`` present; a diverged run counts: its result is deterministic)
is skipped when asked again; a failed or never-finished one is trained again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple

import jax

import controlnet as cn
import solvers
from controlnet.io import atomic_write, current_versions, to_json

from .cache import enable_compile_cache
from .spec import build, normalize, precision_scope, spec_hash

__all__ = ["run", "train", "load_run", "Outcome", "LoadedRun", "run_dir", "is_finished", "TMP_PREFIX",
           "RUNS", "JOURNAL"]

RUNS = "runs"
JOURNAL = "journal.jsonl"
#: The prefix of the library's temporary folders; nothing else is ever removed.
TMP_PREFIX = ".controlnet-tmp-"


class Outcome(NamedTuple):
    """What :func:`run` did: the run's hash, its status (a solve status, ``"failed"``), whether
    this call trained it (``False``: it was already finished), its seconds, the error message."""

    run: str
    status: str
    trained: bool
    seconds: float
    error: str | None = None


def run_dir(out, spec: dict) -> Path:
    """``OUT/runs/<hash>``: where ``spec``'s run lives."""
    return Path(out) / RUNS / spec_hash(spec)


def is_finished(folder) -> bool:
    """Whether ``folder`` holds a finished run (its ``result.json``)."""
    return (Path(folder) / "result.json").is_file()


def train(spec: dict) -> cn.Result:
    """Train ``spec`` once, in its precision, and return the result carrying the spec."""
    spec = normalize(spec)
    with precision_scope(spec):
        built = build(spec)
        result = solvers.solve(built.solver, built.task.problem, built.controls, budget=built.budget,
                               seed=spec["seed"], test=built.task.test, progress=False)
    return dataclasses.replace(result, spec=spec)


def _journal(out: Path, event: str, run: str, **extra) -> None:
    line = json.dumps({"event": event, "run": run, "time": time.time(), "host": socket.gethostname(),
                       "pid": os.getpid(), **extra}) + "\n"
    # One write of one short line on an O_APPEND file: concurrent writers' lines do not interleave.
    fd = os.open(out / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(runs: Path, h: str):
    with open(runs / f".{h}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # waits for another holder; released at its death
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _clean(runs: Path, h: str) -> None:
    """Remove the temporary folders of run ``h`` a killed process left (we hold its lock)."""
    for p in runs.glob(f"{TMP_PREFIX}{h}-*"):
        shutil.rmtree(p, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``; a failure record there is set aside first."""
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-old-", dir=final.parent))
        os.rename(final, old / final.name)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _failure(spec, error: BaseException) -> dict:
    return {"status": "failed", "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(), "spec": spec, "versions": current_versions()}


def run(spec: dict, out, *, force: bool = False) -> Outcome:
    """Train ``spec`` into ``OUT/runs/<hash>`` unless it is finished there (module doc).

    Deterministic: the same spec on the same machine and versions writes the same numbers. An
    exception while building or training (a bad option value, a data set that is missing)
    writes ``failed.json`` with its message and returns status ``"failed"``; a divergence is a
    finished result with status ``"diverged"``. ``force`` trains a finished run again.
    Raises ``ValueError`` at once for a spec :func:`studies.normalize` refuses.
    """
    spec = normalize(spec)
    out = Path(out)
    runs = out / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    h = spec_hash(spec)
    final = runs / h
    t0 = time.perf_counter()
    with _locked(runs, h):
        if is_finished(final) and not force:
            _journal(out, "skipped", h)
            status = json.loads((final / "result.json").read_text())["status"]
            return Outcome(h, status, False, time.perf_counter() - t0)
        _clean(runs, h)
        enable_compile_cache()
        _journal(out, "started", h)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{h}-", dir=runs))
        try:
            result = train(spec)
            result.save(tmp)
            status, error = result.status, None
        except Exception as e:  # any failure of this run is recorded, and the sweep goes on
            failure = _failure(spec, e)
            atomic_write(tmp / "failed.json", lambda f: f.write(to_json(failure, indent=2).encode()))
            status, error = "failed", failure["error"]
        _publish(tmp, final)
        seconds = time.perf_counter() - t0
        _journal(out, "failed" if error else "finished", h, status=status, seconds=seconds)
    return Outcome(h, status, True, seconds, error)


class LoadedRun(NamedTuple):
    """A run rebuilt from its folder: its spec, problem, test split, trained controls, result."""

    spec: dict
    problem: cn.ControlProblem
    test: Any
    controls: cn.Controls
    result: cn.Result


def load_run(folder) -> LoadedRun:
    """Rebuild problem, test split and controls from a finished run's folder alone.

    The problem is built again from the spec stored in ``result.json`` (data regenerated from
    its seed, or the fixed data set reloaded); the controls are the saved ones. A float64 run
    turns on ``jax_enable_x64`` in this process (its arrays must keep their precision after the
    call returns).
    """
    folder = Path(folder)
    if (folder / "failed.json").is_file():
        error = json.loads((folder / "failed.json").read_text()).get("error")
        raise ValueError(f"{folder} is a failed run ({error}); it has no controls to load")
    result = cn.Result.load(folder)
    if not isinstance(result.spec, dict):
        raise ValueError(f"{folder}/result.json has no run spec; it was not written by studies.run")
    spec = normalize(result.spec)
    if spec["precision"] == "float64":
        jax.config.update("jax_enable_x64", True)
    task = build(spec).task
    return LoadedRun(spec, task.problem, task.test, result.controls, result)
