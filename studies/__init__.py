"""Studies: runs as data, sweeps of runs on one machine or a Ray cluster, and their summaries.

The application layer for studies: it imports :mod:`controlnet`, :mod:`problems` and
:mod:`solvers`; only the command line, scripts, notebooks and benchmarks import it.

    specs = studies.grid({"problem": {"name": "ring"}, "solver": "gd", "budget": {"max_iters": 300}},
                         {"problem.horizon": [1.0, 2.0, 4.0], "seed": [0, 1, 2]})
    summary = studies.sweep(specs, "runs/ring", executor=studies.RayExecutor())
"""

from .cache import compile_cache_dir, enable_compile_cache
from .run import LoadedRun, Outcome, is_finished, load_run, run, run_dir, train
from .spec import build, canonical, make_solver, normalize, precision_scope, spec_hash
from .summary import collect, summarize
from .sweep import RayExecutor, SerialExecutor, grid, sweep
from .comparison import compare
from .depth import depth_specs, depth_study, measure_run
from .robustness import robustness_specs, robustness_study
from .adversarial import adversarial_specs, adversarial_study, measure_robustness
