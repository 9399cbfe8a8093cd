"""Robust accuracy against the attack radius: an unconstrained ResNet and a 1-Lipschitz network.

    python -m scripts.robustness --problems two_moons,digits --out runs/robustness

For each problem both networks train by Adam from the same seed; then every test sample is
attacked by the projected gradient attack (ℓ2, 40 steps, through the adjoint) at each radius
``ε``, and for the 1-Lipschitz network (:class:`controlnet.LipschitzNet` layers, Lie splitting)
the certified accuracy (the fraction of test samples whose certified radius is at least ``ε``)
is drawn beside its attacked one. Each problem's two networks are a sweep of runs
(:func:`studies.robustness_study`) in ``OUT/<problem>/``, so a rerun skips the trained ones.
Writes ``OUT/robustness.json`` and ``OUT/<problem>.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import studies
from controlnet import plotting
from controlnet.io import atomic_write

#: The 1-Lipschitz network's step sizes (``problems.make``'s ``field_options``): the largest
#: expansive step its condition allows for ``h_C = 0.5`` (0.1547 is ``1/√0.75 − 1`` rounded down).
LIPSCHITZ_STEPS = dict(contractive_step=0.5, expansive_step=0.1547)
#: Per problem: the two networks' settings (``problems.make`` options), Adam steps and radii. The
#: 1-Lipschitz network has few layers: every layer contracts by at least ``1 − h_C/2`` before it
#: expands.
SETTINGS = {
    "two_moons": dict(resnet=dict(dynamics="inner", width=3, layers=20),
                      lipschitz=dict(dynamics="lipschitz", integrator="lie", width=4, layers=4,
                                     field_options=LIPSCHITZ_STEPS),
                      iters=2000, eps=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5)),
    "ring": dict(resnet=dict(dynamics="inner", width=3, layers=20),
                 lipschitz=dict(dynamics="lipschitz", integrator="lie", width=4, layers=4,
                                field_options=LIPSCHITZ_STEPS),
                 iters=2000, eps=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3)),
    "digits": dict(resnet=dict(dynamics="inner", layers=10),
                   lipschitz=dict(dynamics="lipschitz", integrator="lie", layers=4,
                                  field_options=LIPSCHITZ_STEPS),
                   iters=1500, eps=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5)),
}


def study(name: str, seed: int = 0, iters: int | None = None, samples: int | None = None, steps: int = 40,
          out: Path = Path("runs/robustness")) -> dict:
    """Both networks on problem ``name`` as a sweep into ``out/name`` (:func:`studies.robustness_study`:
    resumable, each network's run in ``out/name/runs/<hash>``)."""
    s = SETTINGS[name]
    size = {} if samples is None else {"samples": samples, "test_samples": samples}
    networks = {arch: {"name": name, **s[arch], **size} for arch in ("resnet", "lipschitz")}
    return studies.robustness_study(out / name, networks, s["eps"], solver={"name": "gd", "lr": 1e-2},
                                    max_iters=s["iters"] if iters is None else iters, seed=seed, steps=steps)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="two_moons,digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/robustness"))
    a = ap.parse_args(argv)
    names = a.problems.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"no robustness settings for {unknown}; choose from {sorted(SETTINGS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        results[name] = r = study(name, a.seed, out=a.out)
        for arch, row in r.items():
            cells = ", ".join(f"ε={e:g}: {acc:.3f}" for e, acc in zip(row["eps"], row["attacked"]))
            cert = "" if "certified" not in row else " | certified " + ", ".join(
                f"{c:.3f}" for c in row["certified"])
            print(f"{name} {arch}: attacked {cells}{cert}; Lipschitz estimate {row['empirical_lipschitz']:.2f}"
                  + (f", bound {row['lipschitz_bound']:.2f}" if "lipschitz_bound" in row else ""), flush=True)
        fig = plotting.plot_robustness({"ResNet": r["resnet"], "1-Lipschitz": r["lipschitz"]},
                                       title=f"{name}: projected gradient attack")
        atomic_write(a.out / f"{name}.png", lambda f, fig=fig: fig.savefig(f, format="png", dpi=110))
    text = json.dumps(results, indent=1)
    atomic_write(a.out / "robustness.json", lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
