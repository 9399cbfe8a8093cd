"""Checkpoints: the whole solver state, the iteration count and the history so far.

A checkpoint holds the whole solver state (controls, optimizer state, PRNG key, ...), the
iteration count and the history so far, in ONE npz file (so one rename makes it atomic)::

    __meta__        JSON: format name and version, iteration, per leaf its path, shape, dtype
    state/<i>       the i-th leaf of the state pytree (PRNG keys stored as their key data)
    history/<name>  one array per logged quantity

Loading needs a state of the same structure (``like``, e.g. ``solver.init(...)``): the
checkpoint must match it leaf by leaf in path, shape and dtype, or it is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from .atomic import atomic_write
from .json_data import to_json

__all__ = ["Checkpoint", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint",
           "checkpoint_info"]

CHECKPOINT_FORMAT = "controlnet-checkpoint"
CHECKPOINT_VERSION = 1


class Checkpoint(NamedTuple):
    """A solver state restored by :func:`load_checkpoint`.

    Attributes:
        state: the solver state, same pytree structure as the ``like`` it was loaded against.
        iteration: number of completed iterations (the state is iterate ``iteration``).
        history: per-iteration arrays of the first ``iteration`` iterations.
        meta: everything else written with it (solver name, problem description, ...).
    """

    state: Any
    iteration: int
    history: dict
    meta: dict


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float64), jax.dtypes.prng_key)


def _leaf_record(path, leaf) -> dict:
    if _is_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        return {"path": jax.tree_util.keystr(path), "shape": list(data.shape),
                "dtype": str(data.dtype), "key_impl": str(jax.random.key_impl(leaf))}
    arr = np.asarray(leaf)
    return {"path": jax.tree_util.keystr(path), "shape": list(arr.shape), "dtype": str(arr.dtype),
            "key_impl": None}


def save_checkpoint(path, state, *, iteration: int, history: dict, meta: dict | None = None) -> Path:
    """Write ``state`` (any pytree of arrays), ``iteration`` and ``history`` to ``path`` atomically."""
    path = Path(path)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    arrays, records = {}, []
    for i, (p, leaf) in enumerate(leaves):
        records.append(_leaf_record(p, leaf))
        arrays[f"state/{i}"] = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    for k, v in history.items():
        arrays[f"history/{k}"] = np.asarray(v)
    head = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "iteration": int(iteration),
            "leaves": records, **(meta or {})}
    text = to_json(head).encode()
    arrays["__meta__"] = np.frombuffer(text, dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def _read_checkpoint(path) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}; resume from a directory written with "
                         "--checkpoint-every (or an interrupted run)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:  # truncated zip, bad CRC, not a zip at all
        raise ValueError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); the file is "
                         "corrupt or not written by controlnet") from None
    if "__meta__" not in arrays:
        raise ValueError(f"{path} is not a controlnet checkpoint (no __meta__ record)")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} has an unreadable __meta__ record ({e}); the checkpoint is "
                         "corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} is not a controlnet checkpoint (format {got!r})")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {meta.get('version')!r}; this controlnet "
                         f"reads version {CHECKPOINT_VERSION}")
    return meta, arrays


def checkpoint_info(path) -> dict:
    """The metadata of the checkpoint at ``path`` (validated format and version), no state."""
    return _read_checkpoint(path)[0]


def load_checkpoint(path, like) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``like``.

    Refuses (``ValueError``) a missing, truncated or foreign file, another format version, and a
    state whose leaves differ from ``like``'s in number, path, shape or dtype.
    """
    path = Path(path)
    meta, arrays = _read_checkpoint(path)
    records = meta.get("leaves")
    template, treedef = jax.tree_util.tree_flatten_with_path(like)
    if not isinstance(records, list) or len(records) != len(template):
        n = len(records) if isinstance(records, list) else "no"
        raise ValueError(f"checkpoint {path} holds {n} state arrays, this solver's state has "
                         f"{len(template)}; was it written by another solver?")
    leaves = []
    for i, ((p, ref), rec) in enumerate(zip(template, records)):
        want = _leaf_record(p, ref)
        if rec.get("path") != want["path"]:
            raise ValueError(f"checkpoint {path}: state array {i} is {rec.get('path')}, this "
                             f"solver expects {want['path']}; was it written by another solver?")
        arr = arrays.get(f"state/{i}")
        if arr is None:
            raise ValueError(f"checkpoint {path} lacks state array {want['path']}; it is corrupt")
        if list(arr.shape) != want["shape"] or list(arr.shape) != rec.get("shape"):
            raise ValueError(f"checkpoint {path}: {want['path']} has shape {list(arr.shape)}, this "
                             f"run needs {want['shape']}; resume with the same problem sizes")
        if str(arr.dtype) != want["dtype"] or str(arr.dtype) != rec.get("dtype"):
            raise ValueError(f"checkpoint {path}: {want['path']} has dtype {arr.dtype}, this run "
                             f"uses {want['dtype']}; resume with the same precision (float64 or not)")
        if want["key_impl"] is not None:
            if rec.get("key_impl") != want["key_impl"]:
                raise ValueError(f"checkpoint {path}: {want['path']} is a {rec.get('key_impl')} "
                                 f"key, this run uses {want['key_impl']} keys")
            leaves.append(jax.random.wrap_key_data(arr, impl=jax.random.key_impl(ref)))
        else:
            leaves.append(jax.numpy.asarray(arr))
    history = {k[len("history/"):]: v for k, v in arrays.items() if k.startswith("history/")}
    iteration = meta.get("iteration")
    if not isinstance(iteration, int) or iteration < 0 or _length(history) > iteration:
        raise ValueError(f"checkpoint {path} says iteration {iteration!r} with {_length(history)} "
                         "history entries; it is corrupt")
    for k in ("format", "version", "iteration", "leaves"):
        meta.pop(k)
    state = jax.tree_util.tree_unflatten(treedef, leaves)
    return Checkpoint(state, iteration, history, meta)


def _length(hist) -> int:
    return max((len(v) for v in hist.values()), default=0)
