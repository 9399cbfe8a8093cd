"""Checks that refuse a command line before any data, compile or file exists.

- The output folder: not empty text, not a file, and never silently replaced: a folder holding
  an unfinished run (``checkpoint.npz``) or a finished result (``result.json``,
  ``summary.json``) is refused unless the command continues it (``--resume``) or is told to
  replace it (``--overwrite``) (:func:`check_out`).
- Options the problem does not have (:func:`check_problem_options`).
- Size: the layer count, and an estimate of the memory of the states and the data against the
  memory this machine has free (:func:`check_size`).

Each raises :class:`~controlnet_cli.arguments.UsageError` with one line naming the option to
change.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .arguments import UsageError
from .lock import check_free

__all__ = ["check_out", "previous_work", "check_problem_options", "check_size", "check_layers",
           "available_memory", "state_bytes", "MAX_LAYERS", "RESULT_FILES"]

#: The most layers a command builds: more is a mistyped step or depth (each layer is a step of
#: the compiled scan in every forward and backward pass), refused before the data are made.
MAX_LAYERS = 100_000

#: Files that mean a folder holds a finished result (of train; of compare or turnpike).
RESULT_FILES = ("result.json", "summary.json")


def previous_work(out: Path) -> str | None:
    """What ``out`` holds that a command would replace: ``"an unfinished run (checkpoint.npz)"``,
    ``"a finished result (result.json)"``, or ``None``."""
    if not out.is_dir():
        return None
    finished = [name for name in RESULT_FILES if (out / name).exists()]
    if finished:
        return f"a finished result ({finished[0]})"
    if (out / "checkpoint.npz").exists():
        return "an unfinished run (checkpoint.npz)"
    return None


def check_out(out: Path, *, overwrite: bool, can_resume: bool):
    """Refuse ``--out`` as empty text, an existing file, or a folder holding a run or a result
    that ``--overwrite`` does not allow to replace; ``can_resume``: the command has ``--resume``."""
    if str(out).strip() in ("", "."):
        raise UsageError("--out is empty; pass the directory to write into, e.g. --out runs/first")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory; pick another path")
    check_free(out)
    held = previous_work(out)
    if held is not None and not overwrite:
        cont = f"--resume {out} to continue it, " if can_resume else ""
        raise UsageError(f"--out {out} holds {held}; pass {cont}--overwrite to replace it, or "
                         "choose another --out")


def check_problem_options(name: str, options: dict):
    """Refuse a problem option the problem does not have: ``--hidden`` for a vector field with
    no hidden width."""
    import controlnet as cn
    import problems

    dynamics = options.get("dynamics") or problems.DEFAULTS.get(name, {}).get("dynamics")
    if options.get("hidden") is None or dynamics not in cn.DYNAMICS:
        return  # an unknown name is problems.make's to refuse, with the choices
    with_width = sorted(n for n, c in cn.DYNAMICS.items() if "width" in _init_fields(c))
    if "width" not in _init_fields(cn.DYNAMICS[dynamics]):
        raise UsageError(f"--hidden sets the hidden width of a vector field that has one "
                         f"({', '.join(with_width)}); --dynamics {dynamics} has none: drop --hidden")


def _init_fields(cls) -> set:
    return {f.name for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) else set()


def available_memory() -> int:
    """Bytes of memory free for a new process: ``MemAvailable`` of ``/proc/meminfo``, else the
    physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def state_bytes(samples: int, layers: int, width: int, float64: bool) -> int:
    """``(N + 1 + 2) S d b``: the states of every layer (kept by a forward pass) plus the
    training and test inputs, zero-padded to the width ``d``, in ``b`` bytes a number. A lower
    bound for a convolutional field, whose state has ``d`` channels times the signal's length."""
    return (layers + 3) * samples * width * (8 if float64 else 4)


def check_layers(layers: int, how: str, fix: str):
    """Refuse more than :data:`MAX_LAYERS` layers; ``how`` says where the count comes from and
    ``fix`` which option to change."""
    if layers > MAX_LAYERS:
        raise UsageError(f"{how} gives {layers:,} layers, more than the {MAX_LAYERS:,} a command builds; {fix}")


def check_size(name: str, options: dict, *, float64: bool, fix: str | None = None):
    """Refuse a problem whose layer count or memory cannot fit, before its data are made.
    ``fix`` says what to change when the options alone do not (turnpike's layers come from
    ``--horizons`` and ``--step``)."""
    import problems

    d = {"samples": 500, **problems.DEFAULTS.get(name, {})}
    S, N, width = (options.get(k) or d.get(k, 1) for k in ("samples", "layers", "width"))
    check_layers(N, f"--layers {N}", fix or "lower --layers")
    need, free = state_bytes(S, N, width, float64), available_memory()
    if need > free:
        named = [f for f, k in (("--samples", "samples"), ("--layers", "layers"), ("--width", "width"))
                 if options.get(k) is not None and not (fix and k == "layers")] or ["--samples"]
        fix = f"lower {' or '.join(named)}" + (f", or {fix}" if fix else "")
        raise UsageError(f"{S:,} samples × {N + 1:,} states of width {width} need about {need / 2**30:.3g} GiB "
                         f"for the states and data alone, and this machine has {free / 2**30:.3g} GiB free; {fix}")
