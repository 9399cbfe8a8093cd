"""Results of a solve: controls, history and a summary, saved to and loaded from a directory.

Layout of a result directory::

    result.json    format name and version, status, summary numbers, array shapes
    controls.npz   the controls, one array per leaf, named by its path ("theta/W", "w/A", ...)
    history.npz    one array per logged quantity, one entry per iteration

Every file is written to a temporary name and renamed into place, ``result.json`` last, so a
directory holds either the previous result or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .problem import Controls

__all__ = ["Result", "FORMAT", "VERSION", "save_controls", "load_controls", "atomic_write"]

FORMAT = "controlnet-result"
VERSION = 1


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _flat(controls: Controls) -> dict[str, np.ndarray]:
    out = {}
    for part in ("theta", "w"):
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
    return Controls(parts["theta"], parts["w"])


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


@dataclasses.dataclass
class Result:
    """The outcome of a solve.

    Attributes:
        controls: the final (or last finite) controls.
        history: per-iteration arrays (``loss``, ``accuracy``, ``grad_norm``, ``time``, ...).
        status: ``"max_iters"``, ``"max_seconds"``, ``"converged"``, ``"target"``,
            ``"diverged"`` or ``"interrupted"``.
        info: summary numbers (solver, iterations, wall time, final loss and accuracies, ...).
    """

    controls: Controls
    history: dict
    status: str
    info: dict

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def save(self, directory) -> Path:
        """Write the result into ``directory`` (created if missing); returns its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        shapes = save_controls(d / "controls.npz", self.controls)
        hist = {k: np.asarray(v) for k, v in self.history.items()}
        atomic_write(d / "history.npz", lambda f: np.savez(f, **hist))
        meta = {"format": FORMAT, "version": VERSION, "status": self.status,
                "controls_shapes": shapes, "history_length": _length(hist), **self.info}
        text = json.dumps(meta, indent=2, default=_jsonable).encode()
        atomic_write(d / "result.json", lambda f: f.write(text))
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
        status = meta.pop("status")
        for k in ("format", "version", "controls_shapes", "history_length"):
            meta.pop(k)
        return cls(controls, history, status, meta)


def _length(hist) -> int:
    return max((len(v) for v in hist.values()), default=0)


def _jsonable(v):
    if isinstance(v, (np.generic, jax.Array)):
        return np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot write {type(v).__name__} to JSON")
