"""Results of a solve: controls, history and a summary, saved to and loaded from a directory.

Layout of a result directory::

    result.json    format name and version, status, summary numbers, array shapes
    controls.npz   the controls, one array per leaf, named by its path ("theta/W", "w/A", ...)
    history.npz    one array per logged quantity, one entry per iteration

Every file is written to a temporary name and renamed into place, ``result.json`` last, and
``result.json`` records the SHA-256 of the two npz files: a save interrupted between two renames
leaves files that do not match, and loading refuses them instead of mixing two results.

A *checkpoint* is the whole solver state (controls, optimizer state, PRNG key, ...), the
iteration count and the history so far, in ONE npz file (so one rename makes it atomic)::

    __meta__        JSON: format name and version, iteration, per leaf its path, shape, dtype
    state/<i>       the i-th leaf of the state pytree (PRNG keys stored as their key data)
    history/<name>  one array per logged quantity

Loading needs a state of the same structure (``like``, e.g. ``solver.init(...)``): the
checkpoint must match it leaf by leaf in path, shape and dtype, or it is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from .problem import Controls

__all__ = [
    "to_json",
    "Result",
    "FORMAT",
    "VERSION",
    "save_controls",
    "load_controls",
    "atomic_write",
    "atomic_write_all",
    "Checkpoint",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_info",
    "versions",
]

FORMAT = "controlnet-result"
VERSION = 1
CHECKPOINT_FORMAT = "controlnet-checkpoint"
CHECKPOINT_VERSION = 1


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
    fail for lack of it."""
    done = []
    try:
        for path, write in writers.items():
            path = Path(path)
            fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
            done.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                if e.errno is None:
                    raise
                # disk full, file too large, ...: say which file, and that nothing was replaced
                raise OSError(e.errno, f"cannot write {path}: {e.strerror}; {path.name} and the files "
                                       "written with it were left as they were") from e
        for tmp, path in done:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in done:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def _flat(controls: Controls) -> dict[str, np.ndarray]:
    out = {}
    for part in ("theta", "w", "lift"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(getattr(controls, part))[0]:
            name = "/".join([part] + [str(getattr(k, "key", getattr(k, "idx", k))) for k in path])
            out[name] = np.asarray(leaf)
    return out


def _unflat(arrays: dict[str, np.ndarray]) -> Controls:
    parts: dict[str, Any] = {"theta": {}, "w": {}}
    for name, arr in arrays.items():
        keys = name.split("/")
        node = parts
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = arr
    return Controls(parts["theta"], parts["w"], parts.get("lift"))


def save_controls(path: Path, controls: Controls) -> dict[str, list[int]]:
    """Write ``controls`` to ``path`` (npz, atomically); returns the shapes written."""
    flat = _flat(controls)
    atomic_write(Path(path), lambda f: np.savez(f, **flat))
    return {k: list(v.shape) for k, v in flat.items()}


def load_controls(path: Path, shapes: dict | None = None) -> Controls:
    """Read controls written by :func:`save_controls`, checking ``shapes`` if given."""
    try:
        with np.load(path) as data:
            flat = {k: data[k] for k in data.files}
    except Exception as e:  # a truncated or foreign file: say which and why
        raise ValueError(f"cannot read controls from {path}: {e}; the file is corrupt or not "
                         "written by controlnet") from None
    if shapes is not None:
        got = {k: list(v.shape) for k, v in flat.items()}
        if got != {k: list(v) for k, v in shapes.items()}:
            raise ValueError(f"controls in {path} have shapes {got}, expected {shapes}")
    return _unflat(flat)


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


@dataclasses.dataclass
class Result:
    """The outcome of a solve.

    Attributes:
        controls: the final (or last finite) controls.
        history: per-iteration arrays (``loss``, ``accuracy``, ``grad_norm``, ``time``, ...).
        status: ``"max_iters"``, ``"max_seconds"``, ``"converged"``, ``"target"``,
            ``"diverged"`` or ``"interrupted"``.
        info: summary numbers (solver, iterations, wall time, final loss and accuracies, ...).
        spec: the run spec that produced it (a JSON mapping), or ``None``.
        versions: the versions of controlnet, jax, jaxlib, numpy and Python that saved it
            (filled in by :meth:`save`).
    """

    controls: Controls
    history: dict
    status: str
    info: dict
    spec: dict | None = None
    versions: dict | None = None

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def save(self, directory) -> Path:
        """Write the result into ``directory`` (created if missing); returns its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        flat = _flat(self.controls)
        hist = {k: np.asarray(v) for k, v in self.history.items()}
        blobs = {"controls.npz": _npz_bytes(flat), "history.npz": _npz_bytes(hist)}
        digests = {name: hashlib.sha256(b).hexdigest() for name, b in blobs.items()}
        meta = {"format": FORMAT, "version": VERSION, "status": self.status,
                "controls_shapes": {k: list(v.shape) for k, v in flat.items()},
                "history_length": _length(hist), "sha256": digests, **self.info,
                "spec": self.spec, "versions": self.versions or versions()}
        blobs["result.json"] = to_json(meta, indent=2).encode()
        # All three or none: a failed write (a full disk) leaves the previous result as it was.
        atomic_write_all({d / name: (lambda f, b=b: f.write(b)) for name, b in blobs.items()})
        return d

    @classmethod
    def load(cls, directory) -> "Result":
        """Read a result written by :meth:`save`; refuses a corrupt or foreign directory."""
        d = Path(directory)
        path = d / "result.json"
        if not path.is_file():
            raise ValueError(f"{d} holds no result.json; is it a controlnet result directory?")
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e}); the result is corrupt") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a controlnet result (format {meta.get('format')!r})"
                             if isinstance(meta, dict) else f"{path} is not a controlnet result")
        if meta.get("version") != VERSION:
            raise ValueError(f"{path} has format version {meta.get('version')}, this controlnet "
                             f"reads version {VERSION}")
        controls = load_controls(d / "controls.npz", meta.get("controls_shapes"))
        try:
            with np.load(d / "history.npz") as data:
                history = {k: data[k] for k in data.files}
        except Exception as e:
            raise ValueError(f"cannot read {d / 'history.npz'}: {e}; the result is corrupt") from None
        if _length(history) != meta.get("history_length"):
            raise ValueError(f"{d / 'history.npz'} has {_length(history)} entries, result.json "
                             f"says {meta.get('history_length')}; the result is corrupt")
        for name, digest in (meta.get("sha256") or {}).items():
            if _sha256(d / name) != digest:
                raise ValueError(f"{d / name} does not match {path} (a save was interrupted or "
                                 "the file was changed); the result is corrupt")
        status, spec, saved_with = meta.pop("status"), meta.pop("spec", None), meta.pop("versions", None)
        for k in ("format", "version", "controls_shapes", "history_length", "sha256"):
            meta.pop(k, None)
        return cls(controls, history, status, meta, spec, saved_with)


def versions() -> dict:
    """The versions of controlnet, jax, jaxlib, numpy and Python in this process."""
    import platform

    import jaxlib

    from . import __version__

    return {"controlnet": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _length(hist) -> int:
    return max((len(v) for v in hist.values()), default=0)


def to_json(obj, indent=None) -> str:
    """Strict JSON text of ``obj``: numpy/JAX scalars and arrays as numbers and lists, and
    non-finite floats (an accuracy of ``nan`` for a regression) as ``null``."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.generic, np.ndarray, jax.Array)):
            return clean(_jsonable(v))
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return v

    return json.dumps(clean(obj), indent=indent, allow_nan=False)


def _jsonable(v):
    if isinstance(v, (np.generic, jax.Array)):
        return np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot write {type(v).__name__} to JSON")
