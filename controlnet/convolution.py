"""The convolution operator ``K ∗ z``, its adjoint ``Kᵀ ∗ v`` and its spectral norm.

``K ∗ z`` is the cross-correlation with "same" zero padding and stride 1, for ``z (…, C_in,
*space)`` (any leading axes, then channels, then 1 or 2 spatial axes) and a kernel ``K (C_out,
C_in, *window)``:

    (K ∗ z)[o, x] = Σ_c Σ_δ K[o, c, δ] · z[c, x + δ − ⌊(w−1)/2⌋]     (z zero outside its space)

The adjoint operator ``Kᵀ`` (``⟨K ∗ u, v⟩ = ⟨u, Kᵀ ∗ v⟩``) is, for an odd window, the same
correlation with the kernel flipped in space and its two channel axes swapped
(:func:`transposed_kernel`). Every convolution of the library (the conv fields of
:mod:`controlnet.conv`, the learned lift, the spectral-norm power iteration) goes through
:func:`conv`, which has two formulations of the same operator:

* ``"matmul"``: the windows as one matrix product. The state is moved channels-last, zero
  padded, and its ``wⁿ`` shifted copies are stacked into the windows matrix ``P (B·|space|,
  wⁿ·C_in)``; then ``K ∗ z = P K̃`` with ``K̃ (wⁿ·C_in, C_out)`` the kernel reshaped, one GEMM,
  moved back channels-first. The windows matrix is ``wⁿ`` times the state, so it is not kept
  for the backward pass: the routine is rematerialized (``jax.checkpoint``), the backward pass
  gathers the windows again from ``z`` (a copy, cheap next to the products) and keeps only the
  state.
* ``"xla"``: ``jax.lax.conv_general_dilated``, XLA's own convolution.

``"auto"`` (the default everywhere) picks by the backend at trace time: ``"matmul"`` on the CPU,
``"xla"`` on GPU and TPU, where XLA's convolution calls the vendor's convolution kernels. Why, as
measured on a 2-core x86 CPU (float32, batch 128, a scan of 8 residual layers forward and
backward; 8-64 channels on signals of length 40 with ``w = 3, 5``, 16 channels on 8 × 8 images
with ``w = 3``; the same gradients to float32 round-off): XLA's CPU convolution ran at a few
GFLOP/s; the rematerialized GEMM took 1/5 of its time with 8 channels and 1/16 to 1/40 with
16-64 channels, at up to about half the machine's float32 GEMM rate. Other formulations measured
slower or level: the windows gathered channels-first (one batched ``einsum``), the ``wⁿ``
shifted products accumulated without a windows matrix (level in 2-D, slower in 1-D),
``lax.conv_general_dilated_patches`` (itself an XLA convolution, with an identity kernel: its
windows cost many times the stacked slices), and the same GEMM with the windows kept for the backward pass (2-3 times slower:
the per-layer windows stacked by the scan cost more than gathering them again). With the windows
kept, carrying the state channels-last through the scans measured level with moving it around
each product, so the fields keep the samples-first, channels-first layout of the scans.

Pass ``implementation="matmul"`` or ``"xla"`` to force a formulation: to :func:`conv`,
:func:`conv_transpose` and :func:`conv_spectral_norm`, and as a field of the conv vector fields
(``Conv(implementation="xla")``) and of :class:`~controlnet.lift.ConvLift`. A field's choice is
part of its structure, so problems with different choices compile separately.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

__all__ = ["IMPLEMENTATIONS", "conv", "conv_transpose", "transposed_kernel", "conv_spectral_norm",
           "resolve_implementation", "check_implementation"]

#: The names :func:`conv` accepts for its formulation (module doc).
IMPLEMENTATIONS = ("auto", "matmul", "xla")

_SPECS = {1: ("NCH", "OIH", "NCH"), 2: ("NCHW", "OIHW", "NCHW")}


def check_implementation(implementation) -> None:
    """Raise unless ``implementation`` is one of :data:`IMPLEMENTATIONS`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"convolution implementation must be one of {IMPLEMENTATIONS} "
                         f"('auto' picks by backend), got {implementation!r}")


def resolve_implementation(implementation: str = "auto") -> str:
    """``"matmul"`` or ``"xla"``: ``"auto"`` resolved by ``jax.default_backend()`` (module doc)."""
    check_implementation(implementation)
    if implementation != "auto":
        return implementation
    return "matmul" if jax.default_backend() == "cpu" else "xla"


def _same_padding(window):
    return [((w - 1) // 2, w - 1 - (w - 1) // 2) for w in window]


def _conv_xla(zb, K):
    ndim = K.ndim - 2
    return jax.lax.conv_general_dilated(zb, K, (1,) * ndim, "SAME", dimension_numbers=_SPECS[ndim])


def _conv_matmul(zb, K):
    """``K ∗ z`` for ``zb (B, C_in, *space)`` as one ``(B·|space|, wⁿC_in) × (wⁿC_in, C_out)`` GEMM."""
    space, window = zb.shape[2:], K.shape[2:]
    zp = jnp.pad(jnp.moveaxis(zb, 1, -1), [(0, 0)] + _same_padding(window) + [(0, 0)])
    shifts = itertools.product(*(range(w) for w in window))
    P = jnp.stack([zp[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(off, space))] for off in shifts],
                  axis=-2)  # (B, *space, wⁿ, C_in), the windows in the kernel's (δ, c) order
    P = P.reshape(zb.shape[0] * math.prod(space), -1)
    Kt = jnp.moveaxis(K, (0, 1), (-1, -2)).reshape(-1, K.shape[0])  # (*window, C_in, C_out) flattened
    out = (P @ Kt).reshape((zb.shape[0],) + tuple(space) + (K.shape[0],))
    return jnp.moveaxis(out, -1, 1)


# The backward pass gathers the windows again rather than keep them (module doc).
_conv_matmul_remat = jax.checkpoint(_conv_matmul, policy=jax.checkpoint_policies.nothing_saveable)


def conv(z, K, implementation: str = "auto"):
    """``K ∗ z`` (module doc): cross-correlation with same zero padding, stride 1.

    ``z (..., C_in, *space)`` with any leading axes, ``K (C_out, C_in, *window)``; the number of
    spatial axes is ``K.ndim − 2`` (1 or 2). Returns ``(..., C_out, *space)``.
    ``implementation``: ``"auto"``, ``"matmul"`` or ``"xla"`` (module doc).
    """
    ndim = K.ndim - 2
    if ndim not in _SPECS:
        raise ValueError(f"a kernel (C_out, C_in, *window) with 1 or 2 spatial axes is needed, got shape {K.shape}")
    if z.ndim < ndim + 1 or z.shape[z.ndim - ndim - 1] != K.shape[1]:
        raise ValueError(f"z of shape {z.shape} does not end in (C_in={K.shape[1]}, {ndim} spatial axes) "
                         f"for the kernel of shape {K.shape}")
    impl = resolve_implementation(implementation)
    lead, tail = z.shape[: z.ndim - ndim - 1], z.shape[z.ndim - ndim - 1:]
    zb = z.reshape((-1,) + tail)
    out = (_conv_matmul_remat if impl == "matmul" else _conv_xla)(zb, K)
    return out.reshape(lead + out.shape[1:])


def transposed_kernel(K):
    """The kernel of ``Kᵀ``: flipped in space, channel axes swapped (odd window, same padding)."""
    return jnp.flip(K, axis=tuple(range(2, K.ndim))).swapaxes(0, 1)


def conv_transpose(v, K, implementation: str = "auto"):
    """``Kᵀ ∗ v``, the adjoint of :func:`conv` (``⟨K ∗ u, v⟩ = ⟨u, Kᵀ ∗ v⟩``), ``(..., C_in, *space)``."""
    return conv(v, transposed_kernel(K), implementation)


def conv_spectral_norm(K, space, iters: int = 50, key=None, implementation: str = "auto"):
    """``‖K‖₂`` of ``u ↦ K ∗ u`` on states ``(C_in, *space)``, by ``iters`` power iterations on
    ``KᵀK`` from a random start: ``σ ≈ ‖K v‖`` for the normalized iterate ``v`` (a lower bound
    that converges to ``‖K‖₂``). ``K (C_out, C_in, *window)``; vmap it for a stack of layers."""
    key = jax.random.PRNGKey(0) if key is None else key
    v = jax.random.normal(key, (K.shape[1],) + tuple(space), K.dtype)

    def body(_, v):
        u = conv_transpose(conv(v, K, implementation), K, implementation)
        return u / jnp.linalg.norm(u)

    v = jax.lax.fori_loop(0, iters, body, v / jnp.linalg.norm(v))
    return jnp.linalg.norm(conv(v, K, implementation))
