"""The direct solver: the whole discrete control problem as one NLP, solved by IPOPT (CasADi).

Laid out in the order of the problem statement (as CasADi's own direct multiple shooting
example): decision variables, objective, dynamics, initial guess, solve, post-processing.

Multiple shooting (default). Variables ``Θ (p×N)``, the states ``Z_1 … Z_N`` (each ``d×S``) and
the read-out ``w``; ``Z_0 = λ1(x)`` is data. The dynamics are equality constraints

    g_k = Ψ_h(Z_k, θ_k) − Z_{k+1} = 0,        k = 0..N−1,

and the objective is ``J`` of :mod:`controlnet.problem` evaluated on those states. Single
shooting (``shooting="single"``): variables ``Θ`` and ``w`` only, the states by the forward pass.

Co-states. CasADi's Lagrangian is ``J + Σ_k λ_kᵀ g_k``; stationarity in ``Z_{k+1}`` reads
``λ_k = ∇_z [λ_{k+1}·Ψ_h(Z_{k+1}, θ_{k+1}) + h L(Z_{k+1}, w)]`` and ``λ_{N−1} = ∇Φ(Z_N, w)``, which
is the adjoint equation of :mod:`controlnet.adjoint` for ``p_{k+1} = −λ_k``: so
``p_N = −∇Φ = −(1/S)∇ℓ_i`` per sample and ``p_k = ∇_z H_k(z_k, p_{k+1}, θ_k)``. ``Z_0`` is not a
variable, so ``p_0 = ∇_z H_0(z_0, p_1, θ_0)`` is computed from ``p_1`` by that formula. Single
shooting has no dynamics constraints and returns no co-states.

L1 is not differentiable at 0, and IPOPT assumes ``C²`` functions. With ``l1 > 0`` the controls
are split, ``Θ = Θ⁺ − Θ⁻`` with ``Θ± ≥ 0`` (bounds, which IPOPT handles natively), and
``‖θ‖₁`` becomes the linear ``Σ(θ⁺ + θ⁻)``; at a solution ``θ⁺θ⁻ = 0`` componentwise, so the two
problems have the same minimizers. ``N·p`` more variables, no more constraints.

How it fits the solve contract. One IPOPT solve is not a pure, jittable step; ``Direct`` has
``run(problem, controls, budget) -> Result`` instead of ``init``/``step``, and
:func:`solvers.solve` hands over to ``run`` for a solver that has one. The history has one entry
per IPOPT iteration (the first is the incoming iterate, as for the other solvers): ``loss`` and
``accuracy`` of the network ``θ_j`` (forward pass, comparable across solvers), IPOPT's own
``objective`` (on the NLP's states, equal to ``loss`` only where the dynamics hold), the
``inf_pr``/``inf_du`` residuals and the wall ``time`` of the iteration. The budget maps to IPOPT
options: ``max_iters`` to ``max_iter``, ``max_seconds`` to ``max_wall_time``, ``tol`` to ``tol``
(IPOPT's scaled KKT error, not the gradient norm); ``target_loss`` and Ctrl-C stop through the
iteration callback. Statuses: ``converged``, ``max_iters``, ``max_seconds``, ``target``,
``interrupted``, ``diverged`` (IPOPT met NaN/Inf or diverging iterates) and ``failed`` (any other
IPOPT failure, e.g. restoration failed); IPOPT's own status is ``info["ipopt_status"]``.

Size guard. Before anything is built, :meth:`Direct.size` estimates variables and nonzeros
(of the constraint Jacobian and the Lagrangian's Hessian) from ``N``, ``S``, ``d`` and ``p``;
:meth:`Direct.check_size` refuses a problem over ``max_variables`` or ``max_nonzeros`` with a
message that says how to make it smaller.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar, NamedTuple

import functools

import jax
import jax.numpy as jnp
import numpy as np

import controlnet as cn
from controlnet.evaluation import train_metrics

from . import casadi_model
from .casadi_model import ca
from .config import Budget
from .inputs import require_single_block
from .direct_nlp import (NLP, costates_from_multipliers, decision_variables, dynamics_constraints,
                         initial_costate_function, pack_states, split_x)

__all__ = ["Direct", "DirectSolution"]

_STATUS = {
    "Solve_Succeeded": "converged",
    "Solved_To_Acceptable_Level": "converged",
    "Maximum_Iterations_Exceeded": "max_iters",
    "Maximum_WallTime_Exceeded": "max_seconds",
    "Maximum_CpuTime_Exceeded": "max_seconds",
    "Invalid_Number_Detected": "diverged",
    "Diverging_Iterates": "diverged",
}


class DirectSolution(NamedTuple):
    """What one IPOPT solve gives (:meth:`Direct.solve_nlp`).

    ``states`` and ``costates`` have the core's shape ``(N+1, S, d)``; ``states`` are the NLP's
    (multiple shooting) or the forward pass's (single shooting); ``costates`` are ``None`` for
    single shooting. ``status`` is in the driver's vocabulary (module doc).
    """

    controls: cn.Controls
    states: np.ndarray
    costates: np.ndarray | None
    status: str
    ipopt_status: str
    iterations: int
    ipopt_time: float
    build_time: float
    objective: float
    history: dict
    size: dict


@jax.jit
def _states_costates(problem, controls):
    zs = cn.forward(problem, controls.theta)
    return zs, cn.costates(problem, controls, zs)


@functools.cache
def _monitor_class():
    """The class of IPOPT's iteration callback, defined on first use: it subclasses
    ``casadi.Callback``, and ``import solvers`` does not load CasADi."""

    class Monitor(ca.Callback):
        """IPOPT's iteration callback: records ``J(θ_j)``, stops on a target or Ctrl-C."""

        def __init__(self, n_x, n_g, on_iterate):
            ca.Callback.__init__(self)
            self.n_x, self.n_g, self.on_iterate = n_x, n_g, on_iterate
            self.construct("monitor", {})

        def get_n_in(self):
            return ca.nlpsol_n_out()

        def get_n_out(self):
            return 1

        def get_name_in(self, i):
            return ca.nlpsol_out(i)

        def get_name_out(self, i):
            return "stop"

        def get_sparsity_in(self, i):
            name = ca.nlpsol_out(i)
            if name == "f":
                return ca.Sparsity.scalar()
            if name in ("x", "lam_x"):
                return ca.Sparsity.dense(self.n_x)
            if name in ("g", "lam_g"):
                return ca.Sparsity.dense(self.n_g)
            return ca.Sparsity(0, 0)

        def eval(self, arg):
            return [1 if self.on_iterate(np.asarray(arg[0]).ravel(), float(arg[1])) else 0]

    return Monitor


class _Recorder:
    """IPOPT's per-iteration hook (the monitor of :func:`_monitor_class` calls it with ``x`` and ``f``): records the
    network's ``J(θ_j)`` and accuracy, IPOPT's objective and the iteration's wall time; stops
    the solve (returns ``True``) at ``target_loss`` or on Ctrl-C."""

    def __init__(self, problem, dtype, target_loss, callback, bar):
        self.problem, self.dtype, self.target_loss, self.callback, self.bar = problem, dtype, target_loss, callback, bar
        self.history: dict[str, list] = {}
        self.interrupted = False
        self.clock = 0.0
        self.nlp = None  # set once built: the variables' layout

    def to_controls(self, xv) -> cn.Controls:
        theta, w = split_x(xv, self.nlp.slices, self.nlp.model)
        return cn.Controls(*(jax.tree_util.tree_map(lambda a: jnp.asarray(a, self.dtype), t) for t in (theta, w)))

    def __call__(self, xv, f) -> bool:
        try:
            m = train_metrics(self.problem, self.to_controls(xv))
            now = time.perf_counter()
            info = {"loss": float(m["loss"]), "accuracy": float(m["accuracy"]), "objective": f,
                    "time": now - self.clock}
            self.clock = now
            for k, v in info.items():
                self.history.setdefault(k, []).append(v)
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{info['loss']:.4g}")
            if self.callback is not None:
                self.callback(len(self.history["loss"]) - 1, info)
            return self.target_loss is not None and info["loss"] <= self.target_loss
        except KeyboardInterrupt:
            self.interrupted = True
            return True


@dataclasses.dataclass(frozen=True)
class Direct:
    """Direct transcription of the control problem, solved by IPOPT (module doc).

    Args:
        shooting: ``"multiple"`` (states are variables; gives co-states) or ``"single"``.
        hessian: ``"exact"`` (CasADi's second derivatives) or ``"limited-memory"`` (L-BFGS).
        tol: IPOPT's tolerance on the scaled KKT error (``solve(tol=...)`` overrides it).
        warm_multipliers: start the multipliers at ``λ_k = −p_{k+1}`` from the adjoint module
            at the initial controls (multiple shooting), so a warm start is warm in the duals too.
        max_variables: the size guard's limit on the NLP's variables (:meth:`check_size`).
        max_nonzeros: its limit on the nonzeros of the Jacobian and the Hessian.
        verbose: show IPOPT's own output.
        ipopt: further IPOPT options (they override the defaults), e.g. ``{"mu_strategy": "adaptive"}``.
    """

    shooting: str = "multiple"
    hessian: str = "exact"
    tol: float = 1e-8
    warm_multipliers: bool = True
    max_variables: int = 100_000
    max_nonzeros: int = 5_000_000
    verbose: bool = False
    ipopt: Any = ()
    name: ClassVar[str] = "direct"

    def __post_init__(self):
        if self.shooting not in ("multiple", "single"):
            raise ValueError(f"shooting must be 'multiple' or 'single', got {self.shooting!r}")
        if self.hessian not in ("exact", "limited-memory"):
            raise ValueError(f"hessian must be 'exact' or 'limited-memory', got {self.hessian!r}")
        if not self.tol > 0:
            raise ValueError(f"tol must be positive, got {self.tol!r}")
        opts = self.ipopt.items() if isinstance(self.ipopt, dict) else self.ipopt
        object.__setattr__(self, "ipopt", tuple(sorted((str(k), v) for k, v in opts)))

    # -- size guard ----------------------------------------------------------------------------
    def size(self, problem: cn.ControlProblem) -> dict:
        """Estimated NLP size, without building it: variables, constraints and nonzeros.

        Multiple shooting: ``N·p (×2 with L1) + N·S·d + n_w`` variables, ``N·S·d`` constraints;
        Jacobian ``≤ N·S·d·(d + 1 + p)``; Hessian (lower triangle) about
        ``N·[S·(d(d+1)/2 + d·p) + p(p+1)/2] + S·d·n_w·(1 + N·[tracking]) + n_w²``.
        Single shooting: ``N·p + n_w`` variables, a dense Hessian, and the state sensitivities
        (as many as multiple shooting's Jacobian) counted with the nonzeros.
        """
        N, S, d = int(problem.N), int(problem.S), int(problem.width)
        p = _layer_size(problem)
        n_w = problem.loss.n_out * (d + 1)
        split = 2 if "l1" in problem.terms else 1
        if self.shooting == "multiple":
            n_x = N * p * split + N * S * d + n_w
            n_g = N * S * d
            jac = N * S * d * (d + 1 + p)
            track = N if "tracking" in problem.terms else 0
            hess = (N * (S * (d * (d + 1) // 2 + d * p) + p * (p + 1) // 2)
                    + S * d * n_w * (1 + track) + n_w * n_w)
        else:
            # No constraints, but the state sensitivities have the same nonzeros as multiple
            # shooting's Jacobian (they are what the forward-over-reverse Hessian computes).
            n_x, n_g, jac = N * p * split + n_w, 0, N * S * d * (d + 1 + p)
            hess = n_x * (n_x + 1) // 2
        if self.hessian == "limited-memory":
            hess = 0
        return {"variables": n_x, "constraints": n_g, "jacobian_nonzeros": jac,
                "hessian_nonzeros": hess, "nonzeros": jac + hess}

    def check_size(self, problem: cn.ControlProblem) -> dict:
        """:meth:`size`, or a ``ValueError`` saying how to shrink a problem over the limits."""
        s = self.size(problem)
        if s["variables"] <= self.max_variables and s["nonzeros"] <= self.max_nonzeros:
            return s
        N, S, d = int(problem.N), int(problem.S), int(problem.width)
        hints = [f"fewer samples (now {S}; the size grows linearly in S)",
                 f"fewer layers (now {N})", f"a narrower state (width now {d})"]
        if self.shooting == "multiple":
            single = dataclasses.replace(self, shooting="single").size(problem)
            hints.append(f"shooting='single' ({single['variables']:,} variables, "
                         f"{single['nonzeros']:,} nonzeros, but no co-states)")
        if self.hessian == "exact":
            hints.append("hessian='limited-memory' (no second derivatives)")
        raise ValueError(
            f"the direct solve of this problem is too big: about {s['variables']:,} variables "
            f"and {s['nonzeros']:,} nonzeros (limits {self.max_variables:,} and "
            f"{self.max_nonzeros:,}); IPOPT would not fit in memory or would take hours. "
            "Make it smaller: " + "; ".join(hints) + ". Or raise max_variables/max_nonzeros "
            "if you know the machine can take it."
        )

    # -- build: decision variables, dynamics, objective, solver ---------------------------------
    def _build(self, problem, on_iterate, options) -> NLP:
        m = casadi_model.model(problem)
        split = "l1" in m.terms
        v = decision_variables(m, split, self.shooting == "multiple")
        Zbefore, ZN, g = dynamics_constraints(m, v)
        J = m.cost_from_states(v.Theta, v.w, Zbefore, ZN, l1=v.l1)
        monitor = _monitor_class()(v.x.numel(), g.numel(), on_iterate)
        solver = ca.nlpsol("direct", "ipopt", {"x": v.x, "f": J, "g": g},
                           self._ipopt_options(monitor, split, options))
        return NLP(solver, monitor, m, v.slices, v.lbx, v.ubx, g.numel(), initial_costate_function(m))

    def _ipopt_options(self, monitor, split, options) -> dict:
        """CasADi's and IPOPT's options: the measured defaults, then the budget's ``options``,
        then the user's :attr:`ipopt`."""
        return {
            "print_time": self.verbose,
            "iteration_callback": monitor,
            "ipopt.print_level": 5 if self.verbose else 0,
            "ipopt.sb": "yes",
            "ipopt.hessian_approximation": self.hessian,
            # AMD ordering: 3x less time per iteration than MUMPS's automatic choice, measured
            # on the ring (100 x 10 and 200 x 20, multiple shooting).
            "ipopt.mumps_pivot_order": 0,
            # With bounds (the L1 split) the barrier matters: adaptive μ took 33 iterations
            # where monotone took 54 (ring, 60 x 5, l1 = 0.02).
            **({"ipopt.mu_strategy": "adaptive"} if split else {}),
            **{"ipopt." + k: v for k, v in options.items()},
            **{"ipopt." + k: v for k, v in self.ipopt},
        }

    # -- solve ----------------------------------------------------------------------------------
    def solve_nlp(self, problem: cn.ControlProblem, controls: cn.Controls, *,
                  max_iters: int = 3000, max_seconds: float | None = None,
                  tol: float | None = None, target_loss: float | None = None,
                  callback=None, progress=None) -> DirectSolution:
        """One IPOPT solve warm-started at ``controls``; see :class:`DirectSolution`."""
        from tqdm.auto import tqdm

        sizes = self.check_size(problem)
        dtype = jax.tree_util.tree_leaves(controls)[0].dtype
        options = {"max_iter": int(max_iters), "tol": float(self.tol if tol is None else tol)}
        if max_seconds is not None:
            options["max_wall_time"] = float(max_seconds)
        if self.shooting == "multiple" and self.warm_multipliers:
            options["warm_start_init_point"] = "yes"
        bar = tqdm(total=max_iters + 1, disable=(None if progress is None else not progress),
                   desc=self.name, leave=False)
        recorder = _Recorder(problem, dtype, target_loss, callback, bar)
        t0 = time.perf_counter()
        nlp = recorder.nlp = self._build(problem, recorder, options)
        # Compile the per-iteration metrics now, so that the first iteration's time is IPOPT's.
        jax.block_until_ready(train_metrics(problem, controls))
        build_time = time.perf_counter() - t0
        args = self._initial_guess(problem, controls, nlp)
        recorder.clock = t_solve = time.perf_counter()
        try:
            sol = nlp.solver(**args)
        finally:
            bar.close()
        ipopt_time = time.perf_counter() - t_solve
        return self._post_process(problem, controls, nlp, sol, recorder, sizes, ipopt_time, build_time)

    def _initial_guess(self, problem, controls, nlp) -> dict:
        """The solver's arguments: ``x0`` from the given controls and their forward pass, the
        bounds, and (multiple shooting, :attr:`warm_multipliers`) ``λ_k = −p_{k+1}``."""
        m, sl = nlp.model, nlp.slices
        Theta0 = m.pack_theta(controls.theta)
        x0 = np.zeros(nlp.lbx.shape)
        if "theta" in sl:
            x0[sl["theta"]] = Theta0.ravel(order="F")
        else:
            x0[sl["theta_plus"]] = np.maximum(Theta0, 0).ravel(order="F")
            x0[sl["theta_minus"]] = np.maximum(-Theta0, 0).ravel(order="F")
        x0[sl["w"]] = m.pack_w(controls.w)
        args = {"x0": x0, "lbx": nlp.lbx, "ubx": nlp.ubx}
        if self.shooting == "multiple":
            zs, ps = (np.asarray(a, float) for a in _states_costates(problem, controls))
            x0[sl["Z"]] = pack_states(zs[1:])
            args.update(lbg=0.0, ubg=0.0)
            if self.warm_multipliers:
                args["lam_g0"] = -pack_states(ps[1:])
        return args

    def _post_process(self, problem, controls, nlp, sol, recorder, sizes, ipopt_time, build_time):
        """:class:`DirectSolution` from IPOPT's answer: controls, status, states, co-states, history."""
        stats = nlp.solver.stats()
        xv = np.asarray(sol["x"], float).ravel()
        ipopt_status = stats["return_status"]
        status = _STATUS.get(ipopt_status, "failed")
        if ipopt_status == "User_Requested_Stop":
            status = "interrupted" if recorder.interrupted else "target"
        new = recorder.to_controls(xv)
        if not np.all(np.isfinite(xv)):
            status, new = "diverged", controls
        if self.shooting == "multiple":
            m, sl = nlp.model, nlp.slices
            states = np.concatenate([m.z0.T[None], m.states(xv[sl["Z"]].reshape(m.d, -1, order="F"))])
            costates = costates_from_multipliers(nlp, xv, np.asarray(sol["lam_g"], float).ravel())
        else:
            states = np.asarray(_states_costates(problem, new)[0], float)
            costates = None
        history = recorder.history
        n = len(history.get("loss", []))
        its = stats.get("iterations", {})
        for key in ("inf_pr", "inf_du"):
            vals = list(its.get(key, []))[:n]
            if len(vals) == n:
                history[key] = vals
        return DirectSolution(
            controls=new, states=states, costates=costates, status=status,
            ipopt_status=ipopt_status, iterations=int(stats.get("iter_count", n - 1)),
            ipopt_time=ipopt_time, build_time=build_time,
            objective=float(sol["f"]), history={k: np.asarray(v) for k, v in history.items()},
            size=sizes,
        )

    def run(self, problem: cn.ControlProblem, controls: cn.Controls, budget: Budget = Budget(3000), *,
            key=None, seed: int = 0, test=None, progress=None, callback=None) -> cn.Result:
        """One IPOPT solve as a :class:`controlnet.Result` (what :func:`solvers.solve` returns),
        within ``budget`` (module doc: how its fields map to IPOPT's options).

        ``key``/``seed`` are accepted for the common signature; IPOPT is deterministic.
        """
        require_single_block(problem, self)
        b = budget
        start = time.perf_counter()
        sol = self.solve_nlp(problem, controls, max_iters=b.max_iters, max_seconds=b.max_seconds,
                             tol=b.tol, target_loss=b.target_loss, callback=callback, progress=progress)
        wall = time.perf_counter() - start
        m = casadi_model.model(problem)
        c64 = jax.tree_util.tree_map(lambda a: np.asarray(a, float), sol.controls)
        _, gT, gw = m.objective_function()(m.pack_theta(c64.theta), m.pack_w(c64.w))
        grad_norm = float(np.sqrt(np.sum(np.asarray(gT) ** 2) + np.sum(np.asarray(gw) ** 2)))
        info = {
            "solver": self.name,
            "iterations": sol.iterations,
            "wall_time": wall,
            "compile_time": sol.build_time,
            "diverged_at": sol.iterations if sol.status == "diverged" else None,
            "problem": problem.describe(),
            "shooting": self.shooting,
            "hessian": self.hessian,
            "ipopt_status": sol.ipopt_status,
            "ipopt_iterations": sol.iterations,
            "ipopt_time": sol.ipopt_time,
            "ipopt_objective": sol.objective,
            "grad_norm": grad_norm,
            **{f"nlp_{k}": v for k, v in sol.size.items()},
        }
        info.update(cn.evaluate(problem, sol.controls, test))
        if sol.status in ("diverged", "failed"):
            print(f"direct: IPOPT stopped with {sol.ipopt_status}; status {sol.status!r}")
        return cn.Result(sol.controls, sol.history, sol.status, info)


def _layer_size(problem) -> int:
    shapes = jax.eval_shape(lambda k: problem.dynamics.init(k, problem.width),
                            jax.ShapeDtypeStruct((2,), np.uint32))
    return sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
