"""The MSA solvers' options as objects: numbers as leaves (a change of ρ or a learning rate
compiles once), equality and JSON round trips, a vector field defined here getting every solver
and offering a closed form through the public registration, and CasADi left unloaded."""

import dataclasses
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import controlnet as cn
import problems
import solvers
from solvers import msa
from solvers.discrete import DiscreteMSA
from solvers.options import from_json, to_json

tmap = jax.tree_util.tree_map


@pytest.fixture(scope="module")
def ring():
    p = problems.make("ring", samples=24, width=3, layers=4, horizon=2.0, l2=1e-2).problem
    return p, p.init_controls(jax.random.PRNGKey(0))


def _leaves_close(a, b, rtol=1e-12, atol=0.0):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def _counted_step():
    """A jitted ``(solver, problem, controls, key) -> (state, info)`` of one ``init`` and one
    ``step``, the solver an argument, and the number of times it was traced."""
    traces = []

    @jax.jit
    def run(solver, problem, controls, key):
        traces.append(1)  # Python, so once per trace
        return solver.step(problem, solver.init(problem, controls, key=key))

    return run, traces


THETA = lambda state: state.controls.theta  # noqa: E731


@pytest.mark.parametrize("make, values, moved", [
    (lambda v: msa.ExtendedMSA(rho=v, inner_lr=v / 10, inner="optax"), (5.0, 6.0), THETA),
    (lambda v: msa.MSA(inner_lr=v, inner_steps=2), (0.05, 0.02), THETA),
    # Binary weights may keep their signs: the accumulator M = θ⁰ + η g shows the new η.
    (lambda v: DiscreteMSA(lr=v, rho=0.1), (1.0, 0.3), lambda state: state.accumulator),
])
def test_a_changed_number_traces_once_and_changes_the_result(ring, make, values, moved):
    p, c = ring
    key = jax.random.PRNGKey(1)
    a, b = make(values[0]), make(values[1])
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    run, traces = _counted_step()
    (sa, ia), (sb, ib) = run(a, p, c, key), run(b, p, c, key)
    assert len(traces) == 1, "a different number must not retrace"
    assert not np.allclose(np.asarray(moved(sa)["W"]), np.asarray(moved(sb)["W"]))
    # The traced numbers give what the same solver gives with them as constants.
    want_state, want_info = jax.jit(b.step)(p, b.init(p, c, key=key))
    _leaves_close(sb.controls, want_state.controls, rtol=1e-12, atol=1e-15)
    _leaves_close(ib, want_info, rtol=1e-12, atol=1e-15)
    run(make(values[0]), p, c, key)  # an equal configuration: the same program
    assert len(traces) == 1


def test_equal_options_compare_equal_and_hash_alike():
    assert msa.ExtendedMSA(rho=5.0) == msa.ExtendedMSA(rho=5.0)
    assert hash(msa.ExtendedMSA(rho=5.0)) == hash(msa.ExtendedMSA(rho=5.0))
    assert msa.ExtendedMSA(inner="newton") == msa.ExtendedMSA(inner=msa.Newton())
    assert msa.ExtendedMSA(readout="gradient").readout == msa.GradientReadout()
    assert msa.ExtendedMSA(inner_gradient="autodiff").inner_gradient == msa.AutodiffGradient()
    assert msa.ExtendedMSA(rho=5.0) != msa.ExtendedMSA(rho=6.0)
    assert msa.MSA() == msa.MSA() and DiscreteMSA(lr=0.5) == DiscreteMSA(lr=0.5)
    assert msa.MSA(batch_size=np.int64(8)).batch_size == 8  # numpy counts become Python ints
    sched = optax.linear_schedule(8.0, 2.0, 4)
    s = msa.ExtendedMSA(rho=sched)
    assert isinstance(s.rho, msa.Schedule) and s == msa.ExtendedMSA(rho=sched)
    assert jax.tree_util.tree_leaves(s.rho) == []  # a schedule is structure, not data
    assert float(s.rho(2)) == float(sched(2))


def test_numbers_are_leaves_and_modes_are_structure():
    s = msa.ExtendedMSA(rho=5.0, rho_min=0.5, inner_lr=0.25, inner_steps=2, batch_size=16)
    leaves = jax.tree_util.tree_leaves_with_path(s)
    assert {jax.tree_util.keystr(k): v for k, v in leaves} == {".inner_lr": 0.25, ".rho": 5.0, ".rho_min": 0.5}
    for other in (dataclasses.replace(s, inner_steps=3), dataclasses.replace(s, inner="newton"),
                  dataclasses.replace(s, batch_size=8), dataclasses.replace(s, adaptive=False)):
        assert jax.tree_util.tree_structure(other) != jax.tree_util.tree_structure(s)
    d = DiscreteMSA(kind="ternary", threshold=0.1, batch_size=4)
    assert sorted(jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(d)) == \
        [".bias_lr", ".decay", ".lr", ".rho", ".threshold"]


@pytest.mark.parametrize("solver", [
    msa.ExtendedMSA(rho=3.0, inner="newton", hessian_samples=64, readout="gradient", batch_size=16),
    msa.ExtendedMSA(inner=msa.OptaxAscent(), inner_gradient="autodiff", adaptive=False, inner_steps=2),
    msa.ExtendedMSA(inner="ipopt"),
    msa.MSA(inner_lr=0.1, inner_steps=4),
    DiscreteMSA(kind="ternary", threshold=0.05, scale=0.5),
])
def test_options_round_trip_through_json(solver):
    spec = to_json(solver)
    assert isinstance(spec["name"], str)
    back = from_json(solvers.SOLVERS, spec)
    assert back == solver and type(back) is type(solver)
    assert from_json({"emsa": msa.ExtendedMSA}, {"name": "emsa", "inner": "newton", "rho": 2.0}) == \
        msa.ExtendedMSA(inner=msa.Newton(), rho=2.0)


def test_options_without_a_json_form_say_so():
    with pytest.raises(TypeError, match="no JSON form"):
        to_json(msa.ExtendedMSA(inner_optimizer=optax.adam(0.1)))
    with pytest.raises(ValueError, match="unknown name 'bfgs'"):
        from_json(solvers.SOLVERS, {"name": "emsa", "inner": "bfgs"})


def test_bad_options_are_refused_when_built():
    for kwargs, match in [({"rho": -1.0}, "rho must be positive"), ({"rho_min": 0.0}, "rho_min"),
                          ({"inner_lr": 0.0}, "inner_lr"), ({"inner_steps": 1.5}, "inner_steps"),
                          ({"batch_size": 0}, "batch_size"), ({"hessian_samples": True}, "hessian_samples"),
                          ({"inner_gradient": "numeric"}, "inner_gradient must be 'closed_form' or 'autodiff'"),
                          ({"readout": msa.Newton()}, "readout must be"),
                          ({"inner": "ipopt", "inner_optimizer": optax.sgd(0.1)}, "inner_optimizer is the optimizer")]:
        with pytest.raises(ValueError, match=match):
            msa.ExtendedMSA(**kwargs)
    with pytest.raises(TypeError, match="adaptive must be True or False"):
        msa.ExtendedMSA(adaptive=1)
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        msa.MSA(inner_optimizer="adam")
    with pytest.raises(ValueError, match="batch_size"):
        DiscreteMSA(batch_size=-2)


# -- a vector field defined here, not in the library ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class Linear(cn.VectorField):
    """``f(z, θ) = W z + b``."""

    def __call__(self, z, theta):
        return z @ theta["W"].T + theta["b"]

    def scan_call(self, zT, theta):
        return theta["W"] @ zT + theta["b"][:, None]

    def init(self, key, d, scale=1.0):
        kW, kb = jax.random.split(key)
        return {"W": scale / d**0.5 * jax.random.normal(kW, (d, d)), "b": 0.1 * jax.random.normal(kb, (d,))}


CALLS = {"gradient": 0, "hessian": 0}


def linear_gradient(problem, data, theta, rho):
    """Euler, ``f = Wz + b``: ``r₁ = z⁺ − z − h(Wz + b)``, ``r₂ = t − p̃⁺ − hWᵀp̃⁺``,
    ``∂/∂W = mean_i[h(p̃⁺ + ρr₁)zᵀ + ρh p̃⁺r₂ᵀ]``, ``∂/∂b = mean_i h(p̃⁺ + ρr₁)``."""
    CALLS["gradient"] += 1  # at trace time: shows that the solver took this path
    h, W, b = problem.h, theta["W"], theta["b"]
    z, pn = data.z, data.p_next
    r1 = data.z_next - z - h * (jnp.einsum("nde,nes->nds", W, z) + b[..., None])
    r2 = data.target - pn - h * jnp.einsum("nde,nds->nes", W, pn)
    q = h * (pn + rho * r1)
    S = z.shape[-1]
    gW = (jnp.einsum("nds,nes->nde", q, z) + rho * h * jnp.einsum("nds,nes->nde", pn, r2)) / S
    return r1, r2, {"W": gW, "b": jnp.sum(q, -1) / S}


def linear_hessian(problem, data, rho):
    """``H̃_k`` is quadratic in ``Θ = [W | b]``: with ``z̃ = (z, 1)``, over ``(e, c), (e', c')``,
    ``−ρh² mean_i[δ_ee' z̃_c z̃_c' + δ_cc'[c<d] p̃⁺_e p̃⁺_e']``, in ``ravel_pytree`` order."""
    CALLS["hessian"] += 1
    N, d, S = data.z.shape
    zt = jnp.concatenate([data.z, jnp.ones_like(data.z[:, :1])], 1)
    gram = jnp.einsum("ncs,nks->nck", zt, zt) / S
    pp = jnp.einsum("nes,nfs->nef", data.p_next, data.p_next) / S
    eye_c = jnp.eye(d + 1).at[d, d].set(0.0)
    hess = jnp.einsum("ef,nck->necfk", jnp.eye(d), gram) + jnp.einsum("ck,nef->necfk", eye_c, pp)
    e, c = np.divmod(np.arange(d * (d + 1)), d + 1)
    order = np.argsort(np.where(c < d, e * d + c, d * d + e))  # W row-major, then b
    hess = hess.reshape(N, d * (d + 1), d * (d + 1))[:, order][:, :, order]
    return -rho * problem.h**2 * hess


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (30, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    p = cn.ControlProblem(Linear(), cn.Euler(), 3, 3, cn.SoftmaxCrossEntropy(2), x, y, T=1.0, l2=1e-2,
                          smoothness=0.1)
    return p, p.init_controls(jax.random.PRNGKey(2))


@pytest.fixture
def registered():
    msa.register_closed_form(cn.Euler, Linear, gradient=linear_gradient, hessian=linear_hessian)
    try:
        yield
    finally:
        msa.register_closed_form(cn.Euler, Linear)  # both None: removed again
    assert not msa.has_closed_form(cn.ControlProblem(Linear(), cn.Euler(), 2, 2, cn.SquaredError(1),
                                                     np.zeros((3, 2)), np.zeros((3, 1))))


def test_a_new_field_gets_every_solver_with_no_solver_change(linear):
    p, c = linear
    assert not msa.has_closed_form(p) and msa.inner_method(msa.ExtendedMSA(), p) == "optax"
    J0 = float(cn.objective_value(p, c))
    for solver in (msa.ExtendedMSA(), msa.MSA(inner_steps=3), solvers.GradientDescent(optax.adam(0.05))):
        r = solvers.solve(solver, p, c, max_iters=6, progress=False)
        assert float(cn.objective_value(p, r.controls)) < J0, solver.name
        if solver.name == "emsa":
            loss = r.history["loss"]
            assert np.all(np.diff(loss) <= 1e-12 * (1 + loss[:-1])), loss


def _data(p, c):
    zs = cn.forward(p, c.theta)
    return msa.layer_data(p, c, zs, cn.backward(p, c, zs)[0])


def test_a_registered_closed_form_is_used_and_is_the_autodiff_gradient(linear, registered):
    p, c = linear
    data = _data(p, c)
    th = tmap(lambda a: a + 0.2 * jnp.cos(jnp.arange(a.size).reshape(a.shape)), c.theta)
    vg = jax.jit(msa.inner_value_and_grad, static_argnums=4)
    before = CALLS["gradient"]
    vc, gc = vg(p, data, th, 3.0, "closed_form")
    assert CALLS["gradient"] == before + 1
    va, ga = vg(p, data, th, 3.0, "autodiff")
    assert CALLS["gradient"] == before + 1  # autodiff does not touch it
    np.testing.assert_allclose(vc, va, rtol=1e-13, atol=1e-15)
    _leaves_close(gc, ga, rtol=1e-12, atol=1e-15)
    hess = jax.jit(msa.inner_hessian, static_argnums=3)
    before = CALLS["hessian"]
    np.testing.assert_allclose(hess(p, data, 3.0, "closed_form"), hess(p, data, 3.0, "autodiff"),
                               rtol=1e-12, atol=1e-14)
    assert CALLS["hessian"] == before + 1
    # The solvers take it: auto now chooses Newton (a closed-form Hessian, 12 parameters per layer).
    assert msa.inner_method(msa.ExtendedMSA(), p) == "newton"
    before = dict(CALLS)
    r = solvers.solve(msa.ExtendedMSA(), p, c, max_iters=5, progress=False)
    assert CALLS["gradient"] > before["gradient"] and CALLS["hessian"] > before["hessian"]
    assert r.history["loss"][-1] < r.history["loss"][0]


def test_registration_refuses_what_is_not_a_class_or_a_function():
    with pytest.raises(TypeError, match="integrator and field classes"):
        msa.register_closed_form(cn.Euler(), Linear, gradient=linear_gradient)
    with pytest.raises(TypeError, match="gradient must be a function"):
        msa.register_closed_form(cn.Euler, Linear, gradient="fast")


def test_importing_the_msa_solvers_loads_no_casadi():
    """``import solvers.msa`` imports neither :mod:`solvers.msa_exact` nor CasADi from any MSA
    module (an import hook records the modules on the stack when CasADi is imported)."""
    code = textwrap.dedent("""
        import importlib.abc, sys, traceback
        importers = []

        class Watch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "casadi":
                    importers.extend(f.filename for f in traceback.extract_stack())
                return None

        sys.meta_path.insert(0, Watch())
        import solvers.msa
        mine = [f for f in importers if "/solvers/msa/" in f or f.endswith(("msa_exact.py", "discrete.py"))]
        print("solvers.msa_exact" in sys.modules, mine)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False []", out


def test_the_inner_optimizer_state_carries_across_iterations(ring):
    """``carry_inner_state=True``: Adam's step count (one inner step per iteration) advances with
    the iterations, as in one optimizer run; ``False``: nothing is carried."""
    p, c = ring
    s = msa.ExtendedMSA(inner_optimizer=optax.adam(1e-2), inner_steps=1, adaptive=False)
    state = s.init(p, c, key=jax.random.PRNGKey(0))
    step = jax.jit(s.step)
    for _ in range(3):
        state, _ = step(p, state)
    assert int(state.inner_state[0].count) == 3
    fresh = dataclasses.replace(s, carry_inner_state=False)
    assert fresh.init(p, c, key=jax.random.PRNGKey(0)).inner_state == ()
