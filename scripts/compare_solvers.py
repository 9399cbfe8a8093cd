"""Gradient descent, basic MSA and extended MSA on the ring, from the same initial controls.

    python scripts/compare_solvers.py [OUT]      (default OUT: runs/compare)

Runs ``controlnet compare --problem ring --samples 500 --solvers gd,msa,emsa --iters 300 --out
OUT``: each solver a run of one sweep in ``OUT/runs/<hash>`` (a rerun skips the finished ones);
prints one table and writes OUT/summary.json, loss_vs_iter.png and loss_vs_time.png.
"""

import sys

from controlnet_cli.app import main

out = sys.argv[1] if len(sys.argv) > 1 else "runs/compare"
sys.exit(main(["compare", "--problem", "ring", "--samples", "500", "--solvers", "gd,msa,emsa", "--iters", "300",
               "--out", out]))
