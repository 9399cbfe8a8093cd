"""MGRIT over the layers (controlnet.mgrit, controlnet.layer_parallel, the gradient option of
gradient descent): run to convergence, the states, co-states and gradient equal the serial ones
to round-off (float64); with fewer iterations the residual falls and training still reaches the
serial loss; sharded over a ``layers`` mesh axis (and a 2-D samples × layers mesh) the result is
the one-device result to round-off (4 simulated host devices, in a subprocess)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import controlnet as cn
import problems
import solvers
from controlnet.layer_parallel import MGRIT, mgrit_costates, mgrit_gradient, mgrit_states
from controlnet.mgrit import mgrit
from solvers.layer_parallel import LayerParallel


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


# N = 8 layers, c = 2: m = 4 intervals; FCF makes two more C-points exact per iteration, F one.
CASES = {
    "euler_tracking_smooth_l1": dict(integrator="euler", tracking=0.1, smoothness=1e-2, l1=1e-3),
    "rk4_l2": pytest.param(dict(integrator="rk4"), marks=pytest.mark.slow),
}
RUNS = {"FCF": MGRIT(iterations=2, coarsening=2), "F": MGRIT(iterations=4, coarsening=2, relaxation="F"),
        "one_F": MGRIT(iterations=1, coarsening=2, relaxation="F")}


@pytest.fixture(scope="module", params=list(CASES.values()), ids=list(CASES))
def case(request):
    """The serial adjoint and every MGRIT run of one problem, in one compiled program."""
    p = problems.make("ring", samples=6, layers=8, test_samples=0, **request.param).problem
    c = p.init_controls(jax.random.PRNGKey(1))

    @jax.jit
    def run(c):
        J, g, zs, ps = cn.gradient(p, c)
        zsT = jax.vmap(lambda z: cn.to_scan(p, z))(zs)
        out = {"serial": (J, g, zs, ps)}
        for name, opts in RUNS.items():
            out[name] = mgrit_gradient(p, c, opts)
        out["states"] = mgrit_states(p, c.theta, zsT[0], RUNS["FCF"])[0]
        dL = None
        if "tracking" in p.terms:
            dL = -p.h * jax.vmap(jax.grad(p.tracking_cost), in_axes=(0, None))(zs[:-1], c.w)
            dL = jax.vmap(lambda z: cn.to_scan(p, z))(dL)
        pN = cn.terminal_costate(p, zs[-1], c.w)
        out["costates"] = mgrit_costates(p, c.theta, zsT, cn.to_scan(p, pN), dL, RUNS["FCF"])[0]
        return out

    return p, run(c)


@pytest.mark.parametrize("name", ["FCF", "F"])
def test_converged_mgrit_is_the_serial_solution(case, name):
    p, out = case
    J, g, zs, ps = out["serial"]
    J2, g2, zN, info = out[name]
    assert abs(float(J2 - J)) < 1e-13
    assert _max_diff(g2, g) < 1e-12
    assert _max_diff(zN, zs[-1]) < 1e-13
    # The residual of the returned iterate is round-off; the initial guess's is not.
    for res in (info.state_residuals, info.costate_residuals):
        assert res.shape == (RUNS[name].iterations + 1,)
        assert float(res[-1]) < 1e-12 < float(res[0])


def test_states_and_costates_from_mgrit_equal_the_serial_ones(case):
    p, out = case
    J, g, zs, ps = out["serial"]
    assert _max_diff(jax.vmap(lambda z: cn.from_scan(p, z))(out["states"]), zs) < 1e-13
    assert _max_diff(jax.vmap(lambda q: cn.from_scan(p, q))(out["costates"]), ps) < 1e-13


def test_one_iteration_is_inexact_and_reduces_the_residual(case):
    p, out = case
    J, g, zs, ps = out["serial"]
    J1, g1, _, info = out["one_F"]
    res = np.asarray(info.state_residuals)
    assert res[1] < res[0]
    assert _max_diff(g1, g) > 1e-6  # not yet the serial gradient: the tests above are not vacuous


def test_generic_mgrit_on_a_scalar_linear_recursion():
    """``u_{k+1} = a_k u_k + b_k``: the k-th iterate of two-level MGRIT with F-relaxation makes
    the first k C-points exact; after m iterations all of it is the serial recursion."""
    N, c = 12, 3
    a = jnp.linspace(0.5, 1.2, N)
    b = jnp.sin(jnp.arange(N, dtype=float))
    serial = [jnp.array([1.0])]
    for k in range(N):
        serial.append(a[k] * serial[-1] + b[k])
    serial = jnp.stack(serial)
    fine = lambda u, x: x[1][0] * u + x[1][1]  # noqa: E731
    coarse = lambda u, X: X[1] * u  # noqa: E731  (a crude coarse propagator: FAS fixes it)
    us, res = mgrit(fine, coarse, serial[0], (None, (a, b)), (None, a[::c] ** c), coarsening=c,
                    iterations=N // c, relaxation="F")
    assert float(jnp.max(jnp.abs(us - serial))) < 1e-13
    assert float(res[-1]) < 1e-13 < float(res[0])
    # The co-state direction (reverse) of the same map.
    us_r, _ = mgrit(fine, coarse, serial[0], (None, (a, b)), (None, a[::c] ** c), coarsening=c,
                    iterations=N // c, relaxation="F", reverse=True)
    back = [serial[0]]
    for k in reversed(range(N)):
        back.insert(0, a[k] * back[0] + b[k])
    assert float(jnp.max(jnp.abs(us_r - jnp.stack(back)))) < 1e-13


def test_bad_options_are_refused_before_any_work():
    p = problems.make("ring", samples=4, layers=6, test_samples=0).problem
    c = p.init_controls(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="coarsening must divide the number of layers N=6"):
        mgrit_gradient(p, c, MGRIT(coarsening=4))
    with pytest.raises(ValueError, match="relaxation"):
        MGRIT(relaxation="CF")
    with pytest.raises(ValueError, match="iterations"):
        MGRIT(iterations=-1)
    with pytest.raises(ValueError, match="coarse_controls"):
        LayerParallel(coarse_controls="mean")
    with pytest.raises(ValueError, match="layer_parallel"):
        solvers.GradientDescent(gradient="mgrit")
    assert isinstance(solvers.GradientDescent(gradient="layer_parallel").gradient, LayerParallel)


@pytest.mark.slow
def test_two_iterations_train_to_the_serial_loss():
    """Inexact gradients (2 FCF iterations, c = 2, so 8 intervals are not solved exactly) train the
    ring to within 1 % of serial gradient descent's loss at equal steps (the true loss of the
    controls, not MGRIT's estimate)."""
    p = problems.make("ring", samples=32, layers=16, test_samples=0).problem
    c0 = p.init_controls(jax.random.PRNGKey(0))

    def train(solver, steps=200):
        state = solver.init(p, c0, key=jax.random.PRNGKey(0))
        state, _ = jax.lax.scan(lambda s, _: (solver.step(p, s)[0], None), state, None, length=steps)
        return cn.objective_value(p, state.controls)

    serial = float(jax.jit(lambda: train(solvers.GradientDescent(lr=2e-2)))())
    lp = LayerParallel(iterations=2, coarsening=2)
    layer_parallel = float(jax.jit(lambda: train(solvers.GradientDescent(lr=2e-2, gradient=lp)))())
    J0 = float(cn.objective_value(p, c0))
    assert serial < 0.1 * J0  # both really trained
    assert layer_parallel <= 1.01 * serial


SCRIPT = textwrap.dedent(r"""
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh
    import controlnet as cn, problems, solvers
    from controlnet.layer_parallel import MGRIT, mgrit_gradient
    from solvers.layer_parallel import LayerParallel
    from solvers.sharding import replicate, shard_problem

    def diff(a, b):
        return max(float(jnp.max(jnp.abs(x - y))) for x, y in
                   zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    p = problems.make("ring", samples=8, layers=16, test_samples=0, tracking=0.1).problem
    c = p.init_controls(jax.random.PRNGKey(0))
    J, g, zs, ps = cn.gradient(p, c)
    devs = np.asarray(jax.devices())
    out = {"devices": len(devs)}
    meshes = {"layers4": (Mesh(devs, ("layers",)), None),
              "data2_layers2": (Mesh(devs.reshape(2, 2), ("data", "layers")), "data")}
    for name, (mesh, data_axis) in meshes.items():
        pp = p if data_axis is None else shard_problem(p, mesh, axis="data")
        cc = replicate(c, mesh)
        for it in (1, 4):   # 8 intervals: 4 FCF iterations converge
            opts = MGRIT(iterations=it, coarsening=2, mesh=mesh, data_axis=data_axis)
            J2, g2, _, info = jax.jit(lambda c: mgrit_gradient(pp, c, opts))(cc)
            J1, g1, _, info1 = mgrit_gradient(p, c, MGRIT(iterations=it, coarsening=2))
            out[f"{name}_{it}"] = {"vs_one_device": diff(g2, g1), "vs_serial": diff(g2, g),
                                   "residuals": np.asarray(info.state_residuals).tolist(),
                                   "residuals_one": np.asarray(info1.state_residuals).tolist()}
        solver = solvers.GradientDescent(lr=2e-2, gradient=LayerParallel(iterations=1, coarsening=2,
                                         mesh=mesh, data_axis=data_axis))
        r = solvers.solve(solver, pp, cc, max_iters=3, seed=0)
        r1 = solvers.solve(solvers.GradientDescent(lr=2e-2, gradient=LayerParallel(iterations=1, coarsening=2)),
                           p, c, max_iters=3, seed=0)
        out[f"{name}_train"] = diff(r.controls, r1.controls)
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_sharded_over_layers_and_samples_equals_one_device():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    for name in ("layers4", "data2_layers2"):
        one, conv = out[f"{name}_1"], out[f"{name}_4"]
        assert one["vs_one_device"] < 1e-13 and conv["vs_one_device"] < 1e-13
        np.testing.assert_allclose(one["residuals"], one["residuals_one"], rtol=1e-12, atol=1e-14)
        assert one["vs_serial"] > 1e-6  # one iteration is inexact ...
        assert conv["vs_serial"] < 1e-12  # ... four are the serial gradient
        assert out[f"{name}_train"] < 1e-12
