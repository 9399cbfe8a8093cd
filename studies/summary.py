"""The summary of a study, built from its run folders alone (so a sweep still running, or one
that was killed, can be summarized).

``summarize(OUT)`` writes ``OUT/summary.json``, ``OUT/summary.csv`` and one figure per numeric
axis of the sweep, and returns the summary::

    {"axes": [the spec keys that vary], "counts": {status: runs},
     "runs": [one row per run: "run" (hash), "status", the spec's axes, "problem.name",
              "solver.name", "seed", loss, data_loss, accuracy, test_loss, test_accuracy,
              iterations, wall_time, compile_time, error]}

A run's status is its solve's (``max_iters``, ``converged``, ``diverged``, ...), ``failed``
(``failed.json``: the error message is in ``error``), or ``pending`` (listed in ``sweep.json``,
no folder yet). The figure ``data_loss_vs_<axis>.png`` plots the final data loss against a
numeric axis (the horizon, the learning rate, ...), one line per combination of the other
axes, the mean over seeds, each seed a dot.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from controlnet.io import atomic_write, to_json

from .run import RUNS
from .sweep import SWEEP_FILE

__all__ = ["summarize", "collect", "METRICS"]

#: The numbers of a finished run in the summary, from its ``result.json``.
METRICS = ("loss", "data_loss", "accuracy", "test_loss", "test_accuracy", "iterations", "wall_time",
           "compile_time")
_ALWAYS = ("problem.name", "solver.name", "seed")


def _cell(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def _flat(spec: dict) -> dict:
    """The spec as dotted keys (``problem.horizon``); nested mappings below them as JSON text."""
    out = {}
    for k, v in spec.items():
        if k in ("problem", "solver", "budget") and isinstance(v, dict):
            out.update({f"{k}.{kk}": _cell(vv) for kk, vv in v.items()})
        else:
            out[k] = _cell(v)
    return out


def _row(h: str, folder: Path, spec: dict | None) -> dict:
    if (folder / "result.json").is_file():
        meta = json.loads((folder / "result.json").read_text())
        row = {"run": h, "status": meta["status"], "spec": meta.get("spec") or spec}
        row.update({k: meta.get(k) for k in METRICS})
        return row
    if (folder / "failed.json").is_file():
        meta = json.loads((folder / "failed.json").read_text())
        return {"run": h, "status": "failed", "spec": meta.get("spec") or spec, "error": meta.get("error")}
    return {"run": h, "status": "pending", "spec": spec}


def collect(out) -> list[dict]:
    """One row per run of ``out`` (finished, failed, or pending in ``sweep.json``), each with its
    spec under ``"spec"``, sorted by hash."""
    out = Path(out)
    runs = out / RUNS
    if not runs.is_dir() and not (out / SWEEP_FILE).is_file():
        raise ValueError(f"{out} holds no study (no {RUNS}/ and no {SWEEP_FILE}); is it a sweep's --out folder?")
    listed = json.loads((out / SWEEP_FILE).read_text()) if (out / SWEEP_FILE).is_file() else {}
    found = {p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")} if runs.is_dir() else set()
    return [_row(h, runs / h, listed.get(h)) for h in sorted(found | set(listed))]


def _table(rows: list[dict]) -> tuple[list[str], list[dict]]:
    flat = [_flat(r["spec"] or {}) for r in rows]
    keys = sorted({k for f in flat for k in f})
    axes = [k for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1]
    shown = list(_ALWAYS) + [k for k in axes if k not in _ALWAYS]
    table = []
    for r, f in zip(rows, flat):
        t = {"run": r["run"], "status": r["status"], **{k: f.get(k) for k in shown}}
        t.update({k: r.get(k) for k in METRICS})
        t["error"] = r.get("error")
        table.append(t)
    table.sort(key=lambda t: json.dumps([t[k] for k in shown], default=str))
    return axes, table


def summarize(out, *, figures: bool = True, name: str = "summary") -> dict:
    """Build, write and return the summary of the study in ``out`` (module doc), into
    ``OUT/<name>.json`` and ``OUT/<name>.csv``."""
    out = Path(out)
    axes, table = _table(collect(out))
    counts = {}
    for t in table:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    summary = {"axes": axes, "counts": counts, "runs": table}
    text = to_json(summary, indent=1)
    atomic_write(out / f"{name}.json", lambda f: f.write(text.encode()))
    buf = io.StringIO()
    if table:
        writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    atomic_write(out / f"{name}.csv", lambda f: f.write(buf.getvalue().encode()))
    if figures:
        for axis in axes:
            if not axis.endswith("seed") and all(isinstance(t.get(axis), (int, float)) for t in table):
                _figure(out, table, axis, [a for a in axes if a not in (axis, "seed")])
    return summary


def _figure(out: Path, table: list[dict], axis: str, others: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in table if isinstance(t.get("data_loss"), (int, float)) and math.isfinite(t["data_loss"])]
    if not done:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups = {}
    for t in done:
        groups.setdefault(tuple(str(t.get(k)) for k in others), []).append(t)
    for label, rows in sorted(groups.items()):
        xs = sorted({t[axis] for t in rows})
        mean = [sum(t["data_loss"] for t in rows if t[axis] == x) / sum(1 for t in rows if t[axis] == x) for x in xs]
        line = ax.plot(xs, mean, "-", label=", ".join(f"{k}={v}" for k, v in zip(others, label)) or None)[0]
        ax.plot([t[axis] for t in rows], [t["data_loss"] for t in rows], ".", color=line.get_color(), alpha=0.5)
    if all(t[axis] > 0 for t in done) and all(t["data_loss"] > 0 for t in done):
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel("final data loss")
    if others:
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / f"data_loss_vs_{axis}.png", lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
