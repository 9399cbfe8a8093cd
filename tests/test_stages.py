"""Multi-stage problems (controlnet.stages): the adjoint across blocks and connectives, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import controlnet as cn
import problems
import solvers

_map = jax.tree_util.tree_map


def _max_diff(a, b):
    return max(jax.tree_util.tree_leaves(_map(lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))), a, b)))


def _tiny():
    """Three blocks on signals of length 8 (tiny, float64): parabolic (4 channels, with
    smoothness), then average pooling to antisymmetric (6 channels, length 4), then a strided
    convolution to a plain conv block (5 channels, length 2)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 2, 8)), rng.integers(0, 3, 5)
    blocks = (cn.Block(cn.ParabolicConv(kernel=3, ndim=1), N=2, width=4, T=1.0, l2=1e-2, smoothness=1e-1),
              cn.Block(cn.AntisymmetricConv(kernel=3, ndim=1), N=1, width=6, T=0.5, l2=1e-2),
              cn.Block(cn.Conv(kernel=3, ndim=1), N=1, width=5, T=0.5, l1=1e-2))
    connectives = (cn.Connective(kernel=1, downsample="pool"), cn.Connective(kernel=3, downsample="stride"))
    return cn.StagedProblem(blocks, connectives, cn.SoftmaxCrossEntropy(3), x, y, lift=cn.ConvLift(3),
                            pooling="flatten", connective_l2=1e-2)


@jax.jit
def _everything(p, c, d):
    """In one compiled program: J and ∇J by jax.grad and by the adjoint with the co-states, the
    blocks' Hamiltonian gradients, the connectives' vjp, J at c ± εd. (The fast adjoint path,
    :func:`controlnet.value_and_gradient`, is checked through gradient descent's first step.)"""
    J_ref, g_ref = jax.value_and_grad(lambda c: cn.objective(p, c)[0])(c)
    J2, g2, zs, ps = p.gradient(c)
    grad_H = tuple(jax.vmap(lambda z, q, th, st=st: cn.grad_theta(st, z, q, th, None))(zs[s][:-1], ps[s][1:], c.theta[s])
                   for s, st in enumerate(p.stages))
    coupling = tuple(jax.grad(st.coupling)(th) for st, th in zip(p.stages, c.theta))
    crossed = tuple(jax.vjp(lambda z, s=s: p.connectives[s](z, c.lift[s + 1]), zs[s][-1])[1](ps[s + 1][0])[0]
                    for s in range(len(p.connectives)))
    eps = 1e-5
    J_pm = jax.vmap(lambda t: cn.objective(p, _map(lambda a, b: a + t * b, c, d))[0])(jnp.array([eps, -eps]))
    directional = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g2), jax.tree_util.tree_leaves(d)))
    return dict(J_ref=J_ref, g_ref=g_ref, J2=J2, g2=g2, zs=zs, ps=ps,
                grad_H=grad_H, coupling=coupling, crossed=crossed, fd=(J_pm[0] - J_pm[1]) / (2 * eps),
                directional=directional)


@pytest.fixture(scope="module")
def staged():
    p = _tiny()
    c, d = _start(p)
    return p, c, d, _everything(p, c, d)


@jax.jit
def _start(p):
    """Initial controls and a random direction for the finite differences."""
    c = p.init_controls(jax.random.PRNGKey(0))
    leaves, tree = jax.tree_util.tree_flatten(c)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return c, jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def test_adjoint_gradient_equals_jax_grad(staged):
    p, c, _, r = staged
    assert abs(float(r["J2"] - r["J_ref"])) < 1e-13 and _max_diff(r["g2"], r["g_ref"]) < 1e-12
    assert [z.shape for z in r["zs"]] == [(3, 5, 4, 8), (2, 5, 6, 4), (2, 5, 5, 2)]
    assert [q.shape for q in r["ps"]] == [z.shape for z in r["zs"]]
    assert c.lift[1]["K"].shape == (6, 4, 1) and c.lift[2]["K"].shape == (5, 6, 3)
    with pytest.raises(ValueError, match=r"does not divide a block's 1 layers"):
        cn.value_and_gradient(p, c, block=2)


@pytest.mark.slow
def test_checkpointed_gradient_and_block_diagnostics(staged):
    p, c, _, r = staged
    g = jax.jit(lambda p, c: cn.value_and_gradient(p, c, block=1)[1])(p, c)
    assert _max_diff(g, r["g_ref"]) < 1e-12  # checkpointed blocks of one layer
    block = jax.jit(cn.block_diagnostics)(p, c)
    assert [b["control_norms"].shape for b in block] == [(2,), (1,), (1,)]
    assert [b["flow_speed"].shape for b in block] == [(2,), (1,), (1,)]
    assert all(bool(np.all(np.asarray(b["h_lip_local"]) > 0)) for b in block)


def test_adjoint_gradient_equals_finite_differences(staged):
    _, _, _, r = staged
    directional = float(r["directional"])
    assert abs(float(r["fd"]) - directional) < 1e-8 * max(1.0, abs(directional))


def test_hamiltonian_identity_in_every_block(staged):
    """∇_{θ^s_k} J = −∇_θ H^s_k(z^s_k, p^s_{k+1}, θ^s_k) + ∇_{θ^s_k}(coupling), block by block; the
    co-state crosses each connective by its vjp, p^{s−1}_N = J_zC_sᵀ p^s_0."""
    _, _, _, r = staged
    for s in range(3):
        expected = _map(lambda a, b: np.asarray(b) - np.asarray(a), r["grad_H"][s], r["coupling"][s])
        assert _max_diff(expected, r["g_ref"].theta[s]) < 1e-12
    for s in range(2):
        assert _max_diff(r["crossed"][s], r["ps"][s][-1]) < 1e-14


def test_gradient_descent_follows_the_adjoint_gradient_and_lowers_the_loss(staged):
    """Plain SGD, so the first step recovers the gradient GD used (cn.value_and_gradient, the fast
    adjoint path): ∇J = (c_0 − c_1)/lr, up to the rounding of c/lr."""
    p, c, _, r = staged
    lr = 0.1
    solver = solvers.GradientDescent(solvers.SGD(), lr=lr)
    state = solver.init(p, c, key=jax.random.PRNGKey(0))
    step = jax.jit(solver.step)
    losses = []
    for i in range(10):
        state, info = step(p, state)
        losses.append(float(info["loss"]))  # J before the step
        if i == 0:
            used = _map(lambda a, b: (np.asarray(a) - np.asarray(b)) / lr, c, state.controls)
            assert _max_diff(used, r["g_ref"]) < 1e-12
    assert losses[0] == pytest.approx(float(r["J_ref"]), rel=1e-12) and losses[-1] < 0.9 * losses[0]


def test_bad_layouts_are_refused():
    x, y = np.zeros((4, 1, 6)), np.zeros(4, int)
    b = cn.Block(cn.Conv(kernel=3, ndim=1), N=2, width=4)
    loss = cn.SoftmaxCrossEntropy(3)
    with pytest.raises(ValueError, match="2 blocks need 1 connectives"):
        cn.StagedProblem((b, b), (), loss, x, y)
    with pytest.raises(TypeError, match="tuple of controlnet.Block"):
        cn.StagedProblem((b, "conv"), (cn.Connective(),), loss, x, y)
    with pytest.raises(ValueError, match=r"spatial shape \(3,\): use even sizes"):
        cn.StagedProblem((b, b, b), (cn.Connective(downsample="pool"),) * 2, loss, x, y)
    with pytest.raises(ValueError, match="downsample must be one of"):
        cn.Connective(downsample="max")
    with pytest.raises(ValueError, match="kernel must be an odd"):
        cn.Connective(kernel=2)
    with pytest.raises(ValueError, match="states are vectors"):
        dense = cn.Block(cn.InnerActivation(), N=2, width=4)
        cn.StagedProblem((dense, dense), (cn.Connective(downsample="stride"),), loss, np.zeros((4, 3)), y)
    with pytest.raises(ValueError, match="width must be an integer >= the number of input channels"):
        cn.StagedProblem((cn.Block(cn.Conv(kernel=3, ndim=1), N=2, width=1), b), (cn.Connective(),), loss,
                         np.zeros((4, 2, 6)), y)


@pytest.mark.slow
def test_make_builds_mnist1d_in_two_stages():
    t = problems.make("mnist1d_2stage", samples=8, test_samples=4)
    assert [st.state_shape for st in t.problem.stages] == [(32, 40), (64, 20)]
    assert t.test[0].shape == (4, 1, 40) and problems.training_defaults("mnist1d_2stage")["batch_size"] == 128


def test_make_builds_the_two_stage_digits():
    t = problems.make("digits_image_2stage", samples=8, test_samples=4, layers=1, dynamics="antisymmetric_conv")
    p = t.problem
    assert [st.state_shape for st in p.stages] == [(16, 8, 8), (32, 4, 4)] and [st.N for st in p.stages] == [1, 1]
    assert isinstance(p.stages[1].dynamics, cn.AntisymmetricConv)
    with pytest.raises(ValueError, match="no tracking cost"):
        problems.make("mnist1d_2stage", samples=8, test_samples=0, tracking=0.1)


def test_the_layerwise_solvers_refuse_a_staged_problem_before_any_work():


    p = _tiny()
    c = p.init_controls(jax.random.PRNGKey(0))
    for s in (solvers.ExtendedMSA(), solvers.MSA(), solvers.DiscreteMSA()):
        with pytest.raises(TypeError, match="single-block ControlProblem.*gradient descent"):
            solvers.solve(s, p, c, max_iters=1, progress=False)
