"""A sweep: a list of run specs, run by an executor, resumable, summarized from its folders.

    specs = grid(base, {"problem.horizon": [1.0, 2.0, 4.0, 8.0], "seed": [0, 1, 2]})
    summary = sweep(specs, "runs/ring")                               # one process
    summary = sweep(specs, "runs/ring", executor=RayExecutor())       # local Ray, a worker per core
    summary = sweep(specs, "runs/ring", executor=RayExecutor("head:6379"))   # a running cluster

Every spec is checked before any run starts (:func:`studies.normalize`); the specs are recorded
in ``OUT/sweep.json`` (merged with those of earlier sweeps into the same folder, so a summary
lists the runs still pending); each run is :func:`studies.run` (skipped when finished, so a
rerun resumes); the summary is then built from the run folders (:func:`studies.summarize`).

Executors: :class:`SerialExecutor` runs the specs one after the other in this process;
:class:`RayExecutor` makes each run a Ray task (``num_cpus=1``), so a worker process runs one
run at a time and keeps its compiled programs for the next run of the same shapes. Ray retries
a task whose worker died (``max_retries``); the retry finds the run unfinished and trains it
again from the start.
"""

from __future__ import annotations

import copy
import fcntl
import importlib.util
import itertools
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from controlnet.io import atomic_write

from .run import Outcome, run
from .spec import normalize, spec_hash

__all__ = ["grid", "sweep", "SerialExecutor", "RayExecutor", "SWEEP_FILE"]

SWEEP_FILE = "sweep.json"
RAY_MISSING = ("RayExecutor needs Ray: pip install 'controlnet-oc[cluster]' (or 'ray>=2.9'), or run the "
               "sweep with SerialExecutor (controlnet sweep --serial)")


def _set(spec: dict, key: str, value) -> None:
    *path, last = key.split(".")
    node = spec
    for k in path:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"axis {key!r}: {k!r} is not a mapping in the base spec")
    node[last] = copy.deepcopy(value)


def grid(base: dict, axes: dict) -> list[dict]:
    """Every combination of ``axes`` applied to ``base``: a list of specs (the last axis varies
    fastest).

    ``axes`` maps a dotted key of the spec (``"problem.horizon"``, ``"seed"``, ``"solver"``,
    ``"solver.lr"``) to its values. A tuple of keys moves several keys together, its values
    tuples: ``{("problem.horizon", "problem.layers"): [(1.0, 4), (2.0, 8)]}``.
    """
    if not isinstance(axes, dict) or not axes:
        raise ValueError("axes must be a non-empty mapping of dotted keys to lists of values")
    names, values = list(axes), []
    for k in names:
        v = axes[k]
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not len(v):
            raise ValueError(f"axis {k!r} must be a non-empty list of values, got {v!r}")
        if isinstance(k, tuple) and any(not isinstance(x, (tuple, list)) or len(x) != len(k) for x in v):
            raise ValueError(f"axis {k!r} moves {len(k)} keys together: each value is a tuple of {len(k)}")
        values.append(list(v))
    specs = []
    for combo in itertools.product(*values):
        spec = copy.deepcopy(base)
        for k, v in zip(names, combo):
            for key, value in (zip(k, v) if isinstance(k, tuple) else [(k, v)]):
                _set(spec, key, value)
        specs.append(spec)
    return specs


class SerialExecutor:
    """Runs the specs one after the other in this process (no Ray needed)."""

    def map(self, specs: list[dict], out: Path, force: bool = False) -> Iterator[Outcome]:
        for spec in specs:
            yield run(spec, out, force=force)


def _ray_run(spec: dict, out: str, force: bool = False) -> tuple:
    """One Ray task: :func:`studies.run` in a worker process (the outcome as a plain tuple)."""
    return tuple(run(spec, out, force=force))


class RayExecutor:
    """Runs each spec as a Ray task (Ray is an optional extra: ``pip install controlnet-oc[cluster]``).

    Args:
        address: ``None`` starts a local Ray (on 127.0.0.1, no dashboard) for this sweep and
            stops it at the end; ``"host:port"`` joins a running cluster (``ray start --head``);
            ``"auto"`` the one this machine belongs to. A Ray already initialized in this
            process is used as it is.
        workers: CPUs (so concurrent runs) of the local Ray; default: one per core. Ignored
            when joining a cluster, whose nodes say their own ``--num-cpus``.
        max_retries: times Ray reruns a task whose worker process died.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, max_retries: int = 5):
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
        if address is not None and not isinstance(address, str):
            raise ValueError(f"address must be 'host:port', 'auto' or None, got {address!r}")
        if importlib.util.find_spec("ray") is None:  # now, not after the sweep has started
            raise ImportError(RAY_MISSING)
        self.address, self.workers, self.max_retries = address, workers, max_retries

    def _init(self):
        import ray

        if ray.is_initialized():
            return ray, False
        if self.address is None:
            ray.init(num_cpus=self.workers or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     object_store_memory=100 * 2**20, _node_ip_address="127.0.0.1")
        else:
            ray.init(address=self.address, log_to_driver=False)
        return ray, True

    def map(self, specs: list[dict], out: Path, force: bool = False) -> Iterator[Outcome]:
        ray, started = self._init()
        try:
            task = ray.remote(num_cpus=1, max_retries=self.max_retries)(_ray_run)
            pending = [task.remote(spec, str(Path(out).resolve()), force) for spec in specs]
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield Outcome(*ray.get(done[0]))
        finally:
            if started:
                ray.shutdown()


def _record(out: Path, specs: list[dict]) -> None:
    """Merge ``specs`` into ``OUT/sweep.json`` (hash -> spec)."""
    path = out / SWEEP_FILE
    with open(out / ".sweep.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # two sweeps starting at once both get recorded
        known = json.loads(path.read_text()) if path.is_file() else {}
        known.update({spec_hash(s): s for s in specs})
        text = json.dumps(known, indent=1, sort_keys=True)
        atomic_write(path, lambda f: f.write(text.encode()))


def sweep(specs: Iterable[dict], out, *, executor=None, progress: bool | None = None,
          summary: bool = True, on_run: Callable[[Outcome], None] | None = None, force: bool = False) -> dict:
    """Run every spec into ``out`` with ``executor`` (default :class:`SerialExecutor`) and
    return :func:`studies.summarize`'s summary (or ``{"outcomes": [...]}`` with
    ``summary=False``, in the order the runs ended).

    Every spec is checked first: a bad one raises ``ValueError`` (naming its index and key)
    before any run starts. Finished runs are skipped, so running the same sweep again resumes
    it; ``force`` trains them again. ``progress`` shows a bar over the runs (default: on a
    terminal); ``on_run(outcome)`` is called in this process as each run ends (or is skipped).
    """
    from tqdm.auto import tqdm

    specs = list(specs)
    normal = []
    for i, s in enumerate(specs):
        try:
            normal.append(normalize(s))
        except ValueError as e:
            raise ValueError(f"spec {i} of the sweep: {e}") from None
    if not normal:
        raise ValueError("the sweep has no specs")
    unique = list({spec_hash(s): s for s in normal}.values())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _record(out, unique)
    outcomes = []
    executor = SerialExecutor() if executor is None else executor
    with tqdm(total=len(unique), desc="sweep", unit="run", disable=None if progress is None else not progress) as bar:
        for o in executor.map(unique, out, force=force):
            outcomes.append(o)
            if on_run is not None:
                on_run(o)
            bar.set_postfix_str(f"{o.run} {o.status}{'' if o.trained else ' (done before)'} {o.seconds:.1f}s")
            bar.update()
    if not summary:
        return {"outcomes": outcomes}
    from .summary import summarize

    return summarize(out)
