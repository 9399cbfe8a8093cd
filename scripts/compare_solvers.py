"""Gradient descent, basic MSA and extended MSA on the ring, from the same initial controls.

    python scripts/compare_solvers.py [OUT]      (default OUT: runs/compare)

Prints one table and writes OUT/summary.json, loss_vs_iter.png and loss_vs_time.png; the same
as ``controlnet compare --problem ring --solvers gd,msa,emsa --iters 300 --out OUT``.
"""

import sys

import jax

import problems
from solvers import compare

out = sys.argv[1] if len(sys.argv) > 1 else "runs/compare"
task = problems.make("ring", samples=500)
controls = task.problem.init_controls(jax.random.PRNGKey(0))
result = compare.compare(task.problem, ["gd", "msa", "emsa"], controls, max_iters=300, test=task.test)
print(compare.format_table(result.summary))
for path in compare.save(result, out):
    print("wrote", path)
