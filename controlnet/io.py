"""Results of a solve: controls, history and a summary, saved to and loaded from a directory.

Layout of a result directory::

    result.json    format name and version, status, summary numbers, array shapes, the SHA-256
                   of the two npz files, the run spec (if any) and the versions that made it
    controls.npz   the controls, one array per leaf, named by its path ("theta/W", "w/A", ...)
    history.npz    one array per logged quantity, one entry per iteration

A result is replaced all-or-nothing across its files. :meth:`Result.save` writes the new npz
files under versioned names (``.controlnet-tmp-<id>.controls.npz``), flushed to disk; then
replaces ``result.json`` atomically: that is the commit, and the new ``result.json`` names its
``<id>``; then renames the versioned files to their own names. :meth:`Result.load` follows
``result.json``: it reads a versioned file where one is still there, else the plain name, and
checks every file against its digest. So a writer killed at any point leaves the old result or the
new one loadable, and the next save or :func:`tidy` finishes the renames of a committed save and
removes what an uncommitted one left. Only files named ``.controlnet-tmp-*`` are ever removed.
One writer per directory at a time (the command line holds a lock for that).

Checkpoints (the whole solver state in one file) are :mod:`controlnet.checkpoint`'s, re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
import secrets
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .atomic import TEMP_PREFIX, atomic_write, atomic_write_all, sync_dir, temp_path, write_new
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Checkpoint, checkpoint_info, load_checkpoint,
                         save_checkpoint)
from .json_data import jsonable, to_json
from .problem import Controls

__all__ = [
    "to_json",
    "jsonable",
    "Result",
    "current_versions",
    "tidy",
    "DATA_FILES",
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
]

FORMAT = "controlnet-result"
VERSION = 2
#: The result format versions this controlnet reads (1: no versioned files, spec or versions).
READS = (1, 2)
#: The files of a result beside result.json, in the order they are written and checked.
DATA_FILES = ("controls.npz", "history.npz")


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


def load_controls(path, shapes: dict | None = None, *, shown: Path | None = None) -> Controls:
    """Read controls written by :func:`save_controls` (from a path or a binary file object),
    checking ``shapes`` if given; errors name ``shown`` (default ``path``)."""
    shown = path if shown is None else shown
    try:
        with np.load(path) as data:
            flat = {k: data[k] for k in data.files}
    except Exception as e:  # a truncated or foreign file: say which and why
        raise ValueError(f"cannot read controls from {shown}: {e}; the file is corrupt or not "
                         "written by controlnet") from None
    if shapes is not None:
        got = {k: list(v.shape) for k, v in flat.items()}
        if got != {k: list(v) for k, v in shapes.items()}:
            raise ValueError(f"controls in {shown} have shapes {got}, expected {shapes}")
    return _unflat(flat)


def current_versions() -> dict:
    """The versions of controlnet, jax, jaxlib, numpy and Python running now."""
    import jaxlib

    from . import __version__

    return {"controlnet": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


#: Keys of result.json that are not summary numbers (``Result.info`` may not use them).
_RESERVED = ("format", "version", "status", "controls_shapes", "history_length", "sha256", "save_id",
             "spec", "versions")


@dataclasses.dataclass
class Result:
    """The outcome of a solve.

    Attributes:
        controls: the final (or last finite) controls.
        history: per-iteration arrays (``loss``, ``accuracy``, ``grad_norm``, ``time``, ...).
        status: ``"max_iters"``, ``"max_seconds"``, ``"converged"``, ``"target"``,
            ``"diverged"`` or ``"interrupted"``.
        info: summary numbers (solver, iterations, wall time, final loss and accuracies, ...).
        spec: the run spec that produced it (plain JSON data), or ``None``.
        versions: the versions of controlnet, jax, jaxlib, numpy and Python that computed it
            (:func:`current_versions` by default); ``None`` for a result saved without them.
    """

    controls: Controls
    history: dict
    status: str
    info: dict
    spec: dict | None = None
    versions: dict | None = dataclasses.field(default_factory=current_versions)

    def __post_init__(self):
        if not isinstance(self.info, dict):
            raise TypeError(f"Result.info must be a dict, got {type(self.info).__name__}")
        taken = sorted(set(self.info) & set(_RESERVED))
        if taken:
            raise ValueError(f"Result.info may not use the key(s) {', '.join(map(repr, taken))}: result.json "
                             "keeps them for itself; rename them")
        for name in ("spec", "versions"):
            _check_plain(name, getattr(self, name))

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def save(self, directory) -> Path:
        """Write the result into ``directory`` (created if missing), replacing a result there
        all-or-nothing (see the module's docstring); returns its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        flat = _flat(self.controls)
        hist = {k: np.asarray(v) for k, v in self.history.items()}
        blobs = dict(zip(DATA_FILES, (_npz_bytes(flat), _npz_bytes(hist))))
        save_id = secrets.token_hex(8)
        meta = {"format": FORMAT, "version": VERSION, "status": self.status,
                "controls_shapes": {k: list(v.shape) for k, v in flat.items()},
                "history_length": _length(hist),
                "sha256": {name: hashlib.sha256(b).hexdigest() for name, b in blobs.items()},
                "save_id": save_id, "spec": self.spec, "versions": self.versions, **self.info}
        text = to_json(meta, indent=2).encode()
        tidy(d)  # an earlier save's leftovers: finish the committed one, drop the rest
        pending = [_pending(d, save_id, name) for name in blobs]
        tmp = temp_path(d / "result.json")
        try:
            for path, (name, data) in zip(pending, blobs.items()):
                write_new(path, data, shown=d / name)
            write_new(tmp, text, shown=d / "result.json")
            os.replace(tmp, d / "result.json")  # the commit: from here on the new result loads
        except BaseException:
            for path in [*pending, tmp]:
                with contextlib.suppress(OSError):  # best effort: the first error is the one to see
                    os.unlink(path)
            raise
        sync_dir(d)
        _settle(d, save_id)
        return d

    @classmethod
    def load(cls, directory) -> "Result":
        """Read a result written by :meth:`save`; refuses a corrupt or foreign directory.

        A save running at the same time is waited out: if a file does not match and result.json
        changed meanwhile, it is read again."""
        d = Path(directory)
        for attempt in range(5):
            text = _read_text(d)
            try:
                return cls._from(d, text)
            except ValueError:
                if attempt == 4 or _read_text(d) == text:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _from(cls, d: Path, text: bytes) -> "Result":
        meta = _meta(d, text)
        blobs = {name: _read_data(d, meta.get("save_id"), name) for name in DATA_FILES}
        controls = load_controls(io.BytesIO(blobs["controls.npz"]), meta["controls_shapes"],
                                 shown=d / "controls.npz")
        try:
            with np.load(io.BytesIO(blobs["history.npz"])) as data:
                history = {k: data[k] for k in data.files}
        except Exception as e:
            raise ValueError(f"cannot read {d / 'history.npz'}: {e}; the result is corrupt") from None
        if _length(history) != meta["history_length"]:
            raise ValueError(f"{d / 'history.npz'} has {_length(history)} entries, result.json "
                             f"says {meta['history_length']}; the result is corrupt")
        for name, digest in (meta.get("sha256") or {}).items():
            if name in blobs and hashlib.sha256(blobs[name]).hexdigest() != digest:
                raise ValueError(f"{d / name} does not match {d / 'result.json'} (a save was interrupted "
                                 "or the file was changed); the result is corrupt")
        info = {k: v for k, v in meta.items() if k not in _RESERVED}
        return cls(controls, history, meta["status"], info, meta.get("spec"), meta.get("versions"))


def _check_plain(name: str, value) -> None:
    """Refuse a ``spec`` or ``versions`` that would not come back equal from result.json."""
    if value is None:
        return
    try:
        same = isinstance(value, dict) and json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(f"Result.{name} must be a dict of plain JSON data (dicts with string keys, "
                         f"lists, strings, finite numbers, booleans, None), got {value!r:.200}")


def _read_text(d: Path) -> bytes:
    try:
        return (d / "result.json").read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{d} holds no result.json; is it a controlnet result directory?") from None


#: The keys every result.json has, with their types (``sha256`` from version 2 on).
_REQUIRED = {"status": str, "controls_shapes": dict, "history_length": int, "sha256": dict}


def _meta(d: Path, text: bytes) -> dict:
    """result.json's mapping, its format, version and required keys checked."""
    path = d / "result.json"
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt result in {d}: result.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a controlnet result (format {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"{path} is not a controlnet result")
    if meta.get("version") not in READS:
        raise ValueError(f"{path} has format version {meta.get('version')}, this controlnet reads "
                         f"versions {', '.join(map(str, READS))}")
    for key, kind in _REQUIRED.items():
        if key == "sha256" and meta["version"] == 1 and key not in meta:
            continue
        if key not in meta:
            raise ValueError(f"corrupt result in {d}: result.json has no {key!r}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise ValueError(f"corrupt result in {d}: result.json's {key!r} is {meta[key]!r:.80}, not "
                             f"a {kind.__name__}")
    for key in ("spec", "versions"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ValueError(f"corrupt result in {d}: result.json's {key!r} is not a mapping")
    return meta


def _pending(d: Path, save_id: str, name: str) -> Path:
    return d / f"{TEMP_PREFIX}{save_id}.{name}"


def _read_data(d: Path, save_id, name: str) -> bytes:
    """The bytes of data file ``name`` of the save ``save_id``: its versioned file while it is
    there (the save was committed but not settled), else the file of that name."""
    versioned = isinstance(save_id, str) and save_id.isalnum()
    for path in ([_pending(d, save_id, name)] if versioned else []) + [d / name]:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            continue
    raise ValueError(f"corrupt result in {d}: {name} is missing")


def _settle(d: Path, save_id: str) -> None:
    """Rename the versioned files of the committed save ``save_id`` to their own names."""
    moved = False
    for name in DATA_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.replace(_pending(d, save_id, name), d / name)
            moved = True
    if moved:
        sync_dir(d)


def tidy(directory) -> None:
    """Finish what an interrupted writer left in ``directory``: the versioned files of the
    committed result are renamed to their own names, and every other file whose name starts with
    ``.controlnet-tmp-`` is removed. No other file is touched; a missing directory is left alone."""
    d = Path(directory)
    if not d.is_dir():
        return
    try:
        save_id = json.loads(_read_text(d)).get("save_id")
    except (ValueError, OSError, AttributeError):  # no result, or not one of ours: nothing to finish
        save_id = None
    if isinstance(save_id, str) and save_id.isalnum():
        _settle(d, save_id)
    with os.scandir(d) as entries:
        stray = [e.path for e in entries if e.name.startswith(TEMP_PREFIX) and e.is_file(follow_symlinks=False)]
    for path in stray:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _length(hist) -> int:
    return max((len(v) for v in hist.values()), default=0)
