"""The Method of Successive Approximations (Li, Chen, Tai & E, JMLR 2018), basic and extended.

One iteration from the controls ``(θ^j, w^j)`` (:mod:`.iteration`):

1. forward: states ``z^j`` (``cn.flow_and_backward(θ^j)``, which keeps the layers for step 2);
2. backward: co-states ``p^j`` and ``∇_θ H_k`` (batch-summed ``H``), pulled back after the
   read-out (below), as ``cn.backward`` would give them;
3. for every layer ``k`` at once, maximize the augmented Hamiltonian (:mod:`.hamiltonian`)

       H̃_k(θ) = H_k(z_k, p_{k+1}, θ) − C_k(θ) − (ρ/2) (1/S) Σ_i (‖r_{1,i}(θ)‖² + ‖r_{2,i}(θ)‖²)

   from ``θ_k^j``, all of ``z, p`` from iterate ``j``, with the state and costate residuals
   ``r_1 = z_{k+1} − Ψ_h(z_k, θ)``, ``r_2 = p̃_k − ∇_z H̃(z_k, p̃_{k+1}, θ)``. ``ρ = 0`` is basic
   MSA (:class:`MSA`), ``ρ > 0`` extended MSA (:class:`ExtendedMSA`); ``ρ`` may be a number or
   a schedule ``j ↦ ρ_j``.

The inner maximization is a strategy object (:mod:`.inner`): a few safeguarded steps of an optax
optimizer (:class:`OptaxAscent`, :mod:`.ascent`: every layer's objective is non-decreasing,
whatever the optimizer), a Newton step per layer (:class:`Newton`, :mod:`.newton`:
``θ_k^j + M_k⁻¹∇H̃_k``, ``M_k = −∇²H̃_k(θ_k^j)`` made positive definite where it is not), IPOPT
per layer (:class:`Ipopt`) or :class:`Auto`. The default inner optimizer of the extended MSA is
gradient ascent with step ``inner_lr/(ρ h²)``, since the penalties' curvature in ``θ`` is
``ρ h²`` times a data moment: ``1/ρ`` is then literally a step size.

Choosing ``ρ``. Li et al.'s convergence result needs ``ρ`` large compared with Lipschitz
constants that grow with the co-states (with ``‖w‖``), so a fixed ``ρ`` that is fast early can
oscillate later. By default :class:`ExtendedMSA` adapts it: an iteration that would raise ``J``
is rejected and doubles ``ρ``; an accepted one lowers ``ρ`` by 10 %, not below ``rho_min``.

Speed. The inner gradient touches every sample of every layer at every inner step, and the
costate residual makes it a second derivative of ``Ψ_h``. Where a closed form is registered for
the problem's integrator and field (:func:`register_closed_form`; the library registers forward
Euler with its dense fields in :mod:`.dense`) it is used; any other pair takes the same gradient
by automatic differentiation, one ``jax.jvp`` of the step under one ``jax.grad``, at about the
cost of one gradient step per inner step. So a new vector field gets both MSA solvers with no
solver change, and may offer a closed form to make them faster.

Couplings between layers, handled explicitly:

- **H¹ smoothness** ``(β/2h) Σ_k ‖θ_{k+1} − θ_k‖²``: a Jacobi sweep; layer ``k`` maximizes
  ``H̃_k`` minus its share ``C_k`` with both neighbours frozen at iterate ``j``, whose gradient
  in ``θ_k`` is exactly that of the coupling in ``J``; all layers then move at once.
- **Read-out** ``w`` (a terminal parameter, no layer's control), from the states ``z^j``
  (:mod:`.readout`): a safeguarded Newton step on the convex read-out problem before the
  co-states are computed (Gauss-Seidel), or an optimizer step along ``∇_w J``.
- **Tracking** ``h Σ_k L(z_k, w)``: independent of ``θ_k``, it enters the layer problems through
  the co-states and the costate residual's target, and the read-out problem directly.

With ``batch_size`` set, each iteration draws a minibatch without replacement and runs steps
1-3 on it (states and co-states on the batch, as in the paper); the logged ``loss`` is then the
minibatch loss.

Logged every iteration, about the incoming iterate ``j``: ``loss`` (``J``), ``accuracy``,
``grad_norm`` (``‖∇J‖`` over ``θ`` and ``w``, from the same backward pass, so at
``(θ^j, w^{j+1})`` with the Newton read-out); about the move to ``θ^{j+1}``:
``dH = Σ_k [H_k(θ_k^{j+1}) − H_k(θ_k^j)]`` (``z, p`` of iterate ``j``),
``state_residual = Σ_k (1/S) Σ_i ‖r_{1,i}(θ_k^{j+1})‖²`` and ``costate_residual`` likewise with
``r_2`` (both zero at ``θ^j``: they measure how far the update leaves the old trajectory),
``rho``, and for the adaptive extended MSA ``accepted``.

The package, one concept per module: :mod:`.hamiltonian` (layer data, residuals, the inner
objective and its gradient), :mod:`.closed_forms` (the registry of closed forms) and
:mod:`.dense` (the library's), :mod:`.ascent` (the safeguarded ascent), :mod:`.newton`,
:mod:`.inner` (the inner methods as strategy objects), :mod:`.readout` (read-out and lift
updates, shared with :mod:`solvers.discrete`), :mod:`.iteration` (propose, terminal parameters,
accept or reject) and :mod:`.solver` (the options and the two solvers).
"""

from __future__ import annotations

from . import dense  # noqa: F401  (registers the library's closed forms)
from .ascent import maximize_hamiltonians
from .closed_forms import ClosedForm, closed_form, has_closed_form, has_closed_form_hessian, register_closed_form
from .hamiltonian import (LayerData, inner_gradient, inner_objective, inner_value_and_grad, jacobi_coupling,
                          layer_data, residuals)
from .inner import (NEWTON_AUTO_MAX_PARAMS, NEWTON_MAX_PARAMS, Auto, AutodiffGradient, ClosedFormGradient,
                    InnerGradient, InnerMethod, Ipopt, Newton, OptaxAscent, inner_method, layer_params)
from .iteration import MSAState
from .newton import inner_hessian, newton_preconditioner, per_layer, subsample
from .readout import (READOUT_NEWTON_MAX_PARAMS, AutoReadout, GradientReadout, NewtonReadout, ReadoutMethod,
                      readout_method, readout_newton)
from .solver import MSA, ExtendedMSA, MSAOptions, Schedule

__all__ = [
    "MSA", "ExtendedMSA", "MSAOptions", "MSAState", "Schedule",
    "InnerMethod", "Auto", "OptaxAscent", "Newton", "Ipopt", "InnerGradient", "ClosedFormGradient",
    "AutodiffGradient", "ReadoutMethod", "AutoReadout", "NewtonReadout", "GradientReadout",
    "register_closed_form", "closed_form", "ClosedForm", "has_closed_form", "has_closed_form_hessian",
    "LayerData", "layer_data", "residuals", "inner_objective", "inner_value_and_grad", "inner_gradient",
    "jacobi_coupling", "maximize_hamiltonians", "inner_hessian", "newton_preconditioner", "per_layer",
    "subsample", "inner_method", "layer_params", "readout_newton", "readout_method",
    "NEWTON_AUTO_MAX_PARAMS", "NEWTON_MAX_PARAMS", "READOUT_NEWTON_MAX_PARAMS",
]
