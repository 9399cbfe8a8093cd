"""Bad data are refused at construction, before any compile, with a message saying what to pass;
another split of the data is checked against the training data (:meth:`check_inputs`); the
end-of-run numbers (:func:`controlnet.evaluate`); one layer's linearization for solvers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import controlnet as cn
from controlnet.evaluation import train_metrics

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 2))
Y = np.arange(8) % 2


def _problem(x=X, y=Y, **kw):
    return cn.ControlProblem(cn.InnerActivation(), cn.Euler(), 2, 3, cn.Logistic(), x, y, **kw)


# -- the data themselves ------------------------------------------------------------------------
def test_string_or_object_data_are_a_type_error_saying_what_to_pass():
    with pytest.raises(TypeError, match=r"x must be an array of rows of features \(real numbers\), got ndarray "
                                        r"holding strings; convert it first, e.g. np.asarray\(x, dtype=float\)"):
        _problem(x=X.astype(str))
    with pytest.raises(TypeError, match="x must be a rectangular array of rows of features, got list"):
        _problem(x=[[1.0, 2.0], [3.0]] + [[0.0, 0.0]] * 6)
    with pytest.raises(TypeError, match=r"y must be an array of labels or targets \(real numbers\).*strings.*"
                                        r"np.unique\(y, return_inverse=True\)\[1\]"):
        _problem(y=np.where(Y == 1, "dog", "cat"))
    with pytest.raises(TypeError, match="holding Python objects"):
        _problem(x=np.array([[1, None]] * 8, dtype=object))


def test_complex_data_are_refused_not_cast():
    with pytest.raises(TypeError, match=r"x is complex \(complex128\); the network computes on real numbers: "
                                        r"pass real and imaginary parts as separate features"):
        _problem(x=X + 1j * X)
    with pytest.raises(TypeError, match="y is complex"):
        cn.ControlProblem(cn.InnerActivation(), cn.Euler(), 2, 3, cn.SquaredError(1), X, (1 + 1j) * X[:, :1])


def test_values_beyond_the_computation_dtype_are_refused_naming_it():
    x = X.copy()
    x[3, 1] = 1e39  # finite in float64, inf in float32
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"x holds 1 value beyond 3.403e\+38, the largest float32 \(the "
                                             r"computation dtype; largest here 1e\+39\).*jax_enable_x64"):
            _problem(x=x)
        with pytest.raises(ValueError, match="y holds 8 values beyond .* float32"):
            cn.ControlProblem(cn.InnerActivation(), cn.Euler(), 2, 3, cn.SquaredError(1), X, np.full((8, 1), -1e39))
        assert _problem(x=X).x.dtype == jnp.float32
    assert _problem(x=x).x.dtype == jnp.float64  # representable in float64: accepted
    with pytest.raises(ValueError, match=r"x holds NaN or Inf values \(1 of them\)"):
        _problem(x=np.where(np.arange(16).reshape(8, 2) == 5, np.inf, X))


# -- another split of the data ------------------------------------------------------------------
def test_check_inputs_refuses_a_split_of_another_shape():
    p = _problem()
    p.check_inputs(X[:3], Y[:3])  # the same shape: fine
    with pytest.raises(ValueError, match=r"test x has shape \(4, 3\), but the training samples have "
                                         r"shape \(2,\): pass x of shape \(samples, 2\)"):
        p.check_inputs(RNG.normal(size=(4, 3)), Y[:4])  # would be zero-padded to width 3 silently
    with pytest.raises(ValueError, match="test y has 3 rows but test x has 4"):
        p.check_inputs(X[:4], Y[:3])
    with pytest.raises(ValueError, match="logistic labels must be 0 or 1"):
        p.check_inputs(X[:4], np.array([0, 1, 2, 0]), what="validation")
    with pytest.raises(TypeError, match="validation x must be an array"):
        p.check_inputs(np.array(["a", "b"]), what="validation")
    with pytest.raises(ValueError, match=r"the new x has shape \(4, 3\)"):
        p.with_data(RNG.normal(size=(4, 3)), Y[:4])


def test_check_inputs_refuses_a_conv_split_with_other_channels():
    x = RNG.normal(size=(6, 2, 7))
    p = cn.ControlProblem(cn.Conv(kernel=3), cn.Euler(), 2, 3, cn.Logistic(), x, np.arange(6) % 2)
    with pytest.raises(ValueError, match=r"test x has shape \(6, 3, 7\), but the training samples have "
                                         r"shape \(2, 7\): pass x of shape \(samples, 2, 7\)"):
        p.check_inputs(RNG.normal(size=(6, 3, 7)), np.arange(6) % 2)


def test_evaluate_reports_train_and_test_numbers():
    p = _problem(l2=0.1)
    c = p.init_controls(jax.random.PRNGKey(0))
    out = cn.evaluate(p, c, test=(X[:5], Y[:5]))
    assert set(out) == {"loss", "data_loss", "accuracy", "test_loss", "test_accuracy"}
    assert out["loss"] == pytest.approx(float(cn.objective(p, c)[0]), rel=1e-12)
    test_metrics = cn.metrics(p.with_data(X[:5], Y[:5]), c)
    assert out["test_loss"] == pytest.approx(float(test_metrics["data_loss"]), rel=1e-12)
    assert out["test_accuracy"] == float(test_metrics["accuracy"])
    assert set(cn.evaluate(p, c)) == {"loss", "data_loss", "accuracy"}
    with pytest.raises(TypeError, match="test must be a pair \\(x, y\\) of inputs and labels, got dict"):
        cn.evaluate(p, c, test={"x": X, "y": Y})
    assert train_metrics(p, c)["loss"] == out["loss"]


# -- one layer, linearized ----------------------------------------------------------------------
@pytest.mark.parametrize("integrator", [cn.Euler(), cn.RK4()])
def test_linearize_layer_is_the_step_with_its_derivatives(integrator):
    p = cn.ControlProblem(cn.TwoLayer(width=4), integrator, 3, 3, cn.Logistic(), X, Y, T=0.9)
    c = p.init_controls(jax.random.PRNGKey(1))
    th = jax.tree_util.tree_map(lambda a: a[1], c.theta)
    z = jnp.asarray(RNG.normal(size=(8, 3)))
    lin = cn.adjoint.linearize_layer(p, cn.to_scan(p, z), th)
    np.testing.assert_allclose(cn.from_scan(p, lin.value), p.step(z, th), rtol=1e-14)
    dz = jnp.asarray(RNG.normal(size=(8, 3)))
    dth = jax.tree_util.tree_map(lambda a: jnp.asarray(RNG.normal(size=a.shape)), th)
    eps = 1e-6
    fd = (p.step(z + eps * dz, jax.tree_util.tree_map(lambda a, b: a + eps * b, th, dth))
          - p.step(z - eps * dz, jax.tree_util.tree_map(lambda a, b: a - eps * b, th, dth))) / (2 * eps)
    np.testing.assert_allclose(cn.from_scan(p, lin.jvp(cn.to_scan(p, dz), dth)), fd, rtol=1e-7, atol=1e-9)
    # ⟨q, J dz + J_θ dθ⟩ = ⟨J_zᵀq, dz⟩ + ⟨J_θᵀq, dθ⟩: the vjp is the transpose of the jvp.
    q = jnp.asarray(RNG.normal(size=(8, 3)))
    gz, gth = lin.vjp(cn.to_scan(p, q))
    lhs = jnp.vdot(q, cn.from_scan(p, lin.jvp(cn.to_scan(p, dz), dth)))
    rhs = jnp.vdot(cn.from_scan(p, gz), dz) + sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(gth),
                                                                                 jax.tree_util.tree_leaves(dth)))
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)


def test_backward_linearizes_each_layer_at_the_given_states():
    """``backward`` at states that are not the forward pass's: ``p_k = ∇_z H_k(z_k, p_{k+1})``
    layer by layer from the Hamiltonian, at the given ``z_k``."""
    p = _problem(tracking=0.2, l2=0.1)
    c = p.init_controls(jax.random.PRNGKey(2))
    zs = cn.forward(p, c.theta).at[1].add(0.3)
    ps, g_theta, _ = cn.backward(p, c, zs)
    pk = cn.terminal_costate(p, zs[-1], c.w)
    for k in range(p.N - 1, -1, -1):
        th = jax.tree_util.tree_map(lambda a: a[k], c.theta)
        np.testing.assert_allclose(g_theta["W"][k], cn.grad_theta(p, zs[k], pk, th, c.w)["W"], rtol=1e-12)
        pk = cn.grad_z(p, zs[k], pk, th, c.w)
        np.testing.assert_allclose(ps[k], pk, rtol=1e-12, atol=1e-15)
