"""Closed forms of the inner problem's derivatives, offered per (integrator, vector field) pair.

The extended MSA ascends every layer's augmented Hamiltonian ``H̃_k`` (:mod:`.hamiltonian`).
Its gradient and Hessian in ``θ_k`` are always available by automatic differentiation; a pair
``(integrator class, field class)`` may offer faster closed forms through
:func:`register_closed_form`, the one public way to do so (the library's dense fields with
forward Euler register theirs in :mod:`.dense` the same way)::

    import solvers.msa

    def my_gradient(problem, data, theta, rho):
        ...  # (r1, r2, g): the two residuals and the samples' part of the gradient
        return r1, r2, g

    solvers.msa.register_closed_form(cn.Euler, MyField, gradient=my_gradient)

The contract, with ``data`` a :class:`~.hamiltonian.LayerData` (every layer at once, the
scans' layout: ``(N, d, S)`` for a dense field), ``S`` the number of samples and
``p̃⁺ = data.p_next``:

- ``gradient(problem, data, theta, rho) -> (r1, r2, g)``: the residuals
  ``r₁ = z⁺ − Ψ_h(z, θ_k)``, ``r₂ = target − J_zΨ_h(z, θ_k)ᵀp̃⁺`` shaped like ``data.z``, and
  the gradient in every ``θ_k`` (a pytree shaped like ``theta``) of the samples' part

      −mean_i p̃⁺·r₁ − (ρ/2) mean_i (‖r₁‖² + ‖r₂‖²);

  the parameter terms (``−hR − C_k``) are added by the caller. ``rho`` may be a traced value.
- ``hessian(problem, data, rho) -> (N, P, P)``: the Hessian of that samples' part at
  ``θ^j = data.theta`` (where both residuals vanish), per layer, in the order of
  ``jax.flatten_util.ravel_pytree`` of one layer's ``θ_k``.

The key is the exact classes (a subclass of a field may change its formula, so it does not
inherit its parent's closed forms). Tests check every registered form against autodiff.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

__all__ = ["ClosedForm", "register_closed_form", "closed_form", "has_closed_form", "has_closed_form_hessian"]


class ClosedForm(NamedTuple):
    """What one (integrator, field) pair offers: ``gradient`` and ``hessian`` (either may be ``None``)."""

    gradient: Callable | None = None
    hessian: Callable | None = None


_REGISTRY: dict[tuple[type, type], ClosedForm] = {}


def register_closed_form(integrator: type, field: type, *, gradient: Callable | None = None,
                         hessian: Callable | None = None) -> None:
    """Offer closed forms of the inner gradient and/or Hessian for ``(integrator, field)``
    (classes; module doc for the contracts). A later registration for the same pair replaces
    the earlier one; ``gradient=None, hessian=None`` removes it."""
    if not (isinstance(integrator, type) and isinstance(field, type)):
        raise TypeError(f"register_closed_form takes the integrator and field classes (e.g. cn.Euler, "
                        f"cn.InnerActivation), got {integrator!r} and {field!r}")
    for name, fn in (("gradient", gradient), ("hessian", hessian)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be a function or None, got {fn!r}")
    if gradient is None and hessian is None:
        _REGISTRY.pop((integrator, field), None)
    else:
        _REGISTRY[integrator, field] = ClosedForm(gradient, hessian)


def closed_form(problem) -> ClosedForm:
    """The closed forms registered for ``problem``'s integrator and field (both ``None`` if none)."""
    return _REGISTRY.get((type(problem.integrator), type(problem.dynamics)), ClosedForm())


def has_closed_form(problem) -> bool:
    """Whether the inner gradient has a closed form for this integrator and vector field."""
    return closed_form(problem).gradient is not None


def has_closed_form_hessian(problem) -> bool:
    """Whether the inner Hessian has a closed form for this integrator and vector field."""
    return closed_form(problem).hessian is not None
