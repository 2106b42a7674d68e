"""Kernel-vector products from the rules' factors: ``K V = Σ_l J_l (J_lᵀ V)`` with no pass
through the network, K and the dense layers' Jacobians never formed.

The rules path (:mod:`catapults.curvature.ntk_rules.engine`) records, in one forward pass and one
backward pass per output, what each layer's exact contribution to ``K`` is made of (its
factors). A matrix-free eigensolver needs ``K V`` for some 50 vectors; the autograd product
(one VJP and one JVP through the network per vector, ``catapults.curvature.ntk.ntk_matvec``
with ``product="autograd"``) pays about five passes' work each time, while the same product from
stored factors costs two matrix products per layer:

- :class:`~.registry.GradFactor` ``G`` ``(N, m)``: ``G (Gᵀ V)``, ``4·N·m`` flops per vector;
- :class:`~.registry.HadamardFactor` with floating inputs ``F`` ``(n, T, da)`` (a dense layer,
  over ``T`` positions): the weight part of ``J_lᵀ V`` is ``U = sw Σ_{i,t} (Σ_j V_ij H_ijt) ⊗ F_it``
  (``dg × da`` per vector) and ``(J_l U)_ij = sw Σ_t H_ijt · (U F_it)``; the bias part
  ``sb Σ_{i,t} (Σ_j V_ij H_ijt)`` goes back as ``sb Σ_t H_ijt · b``: ``4·n·T·da·dg`` flops per
  vector, the memory of the layer's inputs and output gradients (``n·T·(da + c·dg)``);
- a Hadamard factor with integer inputs (an embedding's indices) scatters ``Σ_j V_ij H_ijt``
  into the rows of the indices present and gathers them back.

``N = n·c`` rows, sample-major (row ``i*c + j`` is output ``j`` of sample ``i``), as everywhere.
Every product is checked against ``K V`` from the float64 ``vmap(jacrev)`` reference in
tests/test_ntk_factor_products.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from catapults.curvature.ntk_rules.registry import Factor, GradFactor, HadamardFactor

Product = Callable[[Tensor, Tensor], None]
"""``(V (N, k), out (N, k))``: adds one factor's ``J_l (J_lᵀ V)`` to ``out``."""


def factor_products(factors: list[Factor], n: int, c: int) -> Callable[[Tensor], Tensor]:
    """``V ↦ Σ_l J_l (J_lᵀ V)`` over ``factors`` (of ``n`` samples, ``c`` outputs); ``V`` of
    shape ``(n·c,)`` or ``(n·c, k)``, in the factors' dtype."""
    terms = [_term(f, n, c) for f in factors]

    def mv(V: Tensor) -> Tensor:
        flat = V.dim() == 1
        V2 = V.reshape(-1, 1) if flat else V
        out = torch.zeros_like(V2)
        for term in terms:
            term(V2, out)
        return out.reshape(-1) if flat else out

    return mv


def _term(f: Factor, n: int, c: int) -> Product:
    if isinstance(f, GradFactor):
        G = f.G.reshape(n * c, -1)

        def grad_term(V: Tensor, out: Tensor) -> None:
            out.addmm_(G, G.T @ V)

        return grad_term
    if f.F is not None and not f.F.is_floating_point():
        return _index_term(f, n, c)
    return _dense_term(f, n, c)


def _weighted(H4: Tensor, V: Tensor, n: int, c: int) -> Tensor:
    """``Σ_j V_ijk H_ijtg`` as ``(n, T, k, dg)``."""
    Vv = V.view(n, c, -1)
    if c == 1:
        return H4[:, 0].unsqueeze(2) * Vv[:, 0].view(n, 1, -1, 1)
    return torch.einsum("ijk,ijtg->itkg", Vv, H4)


def _back(H4: Tensor, B: Tensor, out: Tensor, n: int, c: int, scale: float) -> None:
    """``out_ijk += scale Σ_{t,g} H_ijtg B_itkg`` (``B`` of shape ``(n, T, k, dg)``)."""
    if c == 1:
        got = (H4[:, 0].unsqueeze(2) * B).sum((1, 3))
    else:
        got = torch.einsum("ijtg,itkg->ijk", H4, B).reshape(n * c, -1)
    out.add_(got, alpha=scale)


def _dense_term(f: HadamardFactor, n: int, c: int) -> Product:
    """A layer linear in its weight over positions, floating inputs (module docstring)."""
    T, dg = f.H.shape[1], f.H.shape[2]
    H4 = f.H.view(n, c, T, dg)
    F2 = None if f.F is None else f.F.reshape(n * T, -1)
    sw, sb = f.sw, f.sb
    Hsum = f.H.sum(1) if sb != 0.0 else None  # (N, dg)

    def dense(V: Tensor, out: Tensor) -> None:
        k = V.shape[1]
        HV = _weighted(H4, V, n, c)  # (n, T, k, dg)
        if F2 is not None:
            U = HV.reshape(n * T, k * dg).T @ F2  # (k·dg, da): J_lᵀ V's weight part / sw
            _back(H4, (F2 @ U.T).view(n, T, k, dg), out, n, c, sw * sw)
        if Hsum is not None:
            b = HV.sum((0, 1))  # (k, dg)
            out.addmm_(Hsum, b.T, alpha=sb * sb)

    return dense


def _index_term(f: HadamardFactor, n: int, c: int) -> Product:
    """Integer inputs (one-hot rows of a table): scatter into the rows present, gather back."""
    T, dg = f.H.shape[1], f.H.shape[2]
    H4 = f.H.view(n, c, T, dg)
    uniq, inv = torch.unique(f.F.reshape(-1), return_inverse=True)
    sw, sb = f.sw, f.sb
    Hsum = f.H.sum(1) if sb != 0.0 else None

    def index(V: Tensor, out: Tensor) -> None:
        k = V.shape[1]
        HV = _weighted(H4, V, n, c).reshape(n * T, k * dg)
        U = HV.new_zeros(uniq.numel(), k * dg).index_add_(0, inv, HV)
        _back(H4, U[inv].view(n, T, k, dg), out, n, c, sw * sw)
        if Hsum is not None:
            out.addmm_(Hsum, HV.view(n * T, k, dg).sum(0).T, alpha=sb * sb)

    return index
