"""What the kernel says: its top eigenpairs, the critical learning rate ``η_crit = n·c/λ_max(K)``
and the top-eigenspace loss split ``L = L_top + L_rest`` (docs/conventions.md).

One kernel serves every quantity: :func:`top_eigenpairs`, :func:`critical_lr` and
:func:`loss_split` take a precomputed full kernel ``K=`` (then the model is not differentiated
again), and :func:`ntk_summary` computes the kernel and the outputs once and returns the
spectrum, ``η_crit`` and the split together."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from catapults.curvature.checks import check_per_sample, on_model_device
from catapults.curvature.ntk import PRODUCTS, check_budget, empirical_ntk, ntk_matvec, one_of
from catapults.curvature.precision import full_float32
from catapults.errors import KernelError
from catapults.linalg.eigen import block_krylov_top, blocks_for, eig_top


@full_float32()
def top_eigenpairs(
    model: nn.Module,
    X: Tensor,
    k: int = 5,
    *,
    kind: str = "full",
    method: str = "auto",
    v0: Tensor | None = None,
    tol: float = 1e-8,
    max_dense: int = 6000,
    K: Tensor | None = None,
    block: int = 1,
    product: str = "auto",
    memory_budget: float = 2e9,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` eigenvalues (``(k,)``, descending) and eigenvectors (``(N, k)``) of the NTK.

    Args:
        kind: ``"full"`` (default, ``N = n·c``) or ``"trace"`` (``N = n``).
        method: ``"dense"`` (form K, then eigh / Lanczos on it), ``"lanczos"`` (matrix-free:
            thick-restarted Lanczos (:func:`~catapults.linalg.eigen.block_krylov_top`) on
            ``K v = J(Jᵀ v)``, never forming K; full kernel only), or ``"auto"`` (dense up to
            ``max_dense`` rows).
        v0: previous eigenvectors ``(N, k')`` to warm-start the iterative solvers.
        tol: relative residual bound of the iterative solvers; with a float32 model the
            matrix-free one works to at least ``10·eps(float32)`` and allows the same relative
            to ``√(λ_1 λ_i)`` (what its products resolve).
        block: vectors per product of the matrix-free solver (default 1: a block of batched
            JVP/VJP pairs cost nearly as much per column as single ones on an MLP and a CNN,
            and needed 3-4x more products for the same accuracy: docs/benchmarks.md).
        product, memory_budget: how the matrix-free products are computed
            (:func:`~catapults.curvature.ntk.ntk_matvec`): ``"factors"`` (the rules' factors
            formed once, then two matrix products per layer), ``"autograd"`` (a VJP and a JVP
            through the network per vector) or ``"auto"`` (factors when they fit in half of
            ``memory_budget`` bytes).
        K: a precomputed kernel (of the ``kind`` wanted): its eigenpairs are returned and the
            model is not used.
    """
    if K is not None:
        return eig_top(K, k, v0=v0)
    one_of("product", product, PRODUCTS)
    check_budget(memory_budget)
    X = on_model_device(model, X)  # the solver's vectors live beside the parameters
    n = X.shape[0]
    if method == "auto":
        with torch.no_grad():
            c = model(X[:1]).reshape(1, -1).shape[1]
        N = n * c if kind == "full" else n
        method = "dense" if N <= max_dense else "lanczos"
    if method == "dense":
        return eig_top(empirical_ntk(model, X, kind=kind), k, v0=v0)
    if method != "lanczos":
        raise KernelError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}")
    if kind != "full":
        with torch.no_grad():
            if model(X[:1]).reshape(1, -1).shape[1] > 1:
                raise KernelError("the matrix-free solver works on the full kernel (kind='full')")
    check_per_sample(model, X)
    mv = ntk_matvec(model, X, product=product, memory_budget=memory_budget, check=False)
    with torch.no_grad():
        N = model(X).numel()
    dev, dt = X.device, X.dtype
    if not dt.is_floating_point:
        dt = next(model.parameters()).dtype

    def matmul(V: Tensor) -> Tensor:
        return mv(V.to(dt)).to(torch.float64)

    eps = 10 * torch.finfo(dt).eps
    vals, vecs = block_krylov_top(matmul, N, min(k, N), v0=v0, tol=max(tol, eps), device=dev,
                                  floor=eps if eps > 1e-8 else 0.0, block=block,
                                  max_blocks=blocks_for(50, block))
    return vals.to(dt), vecs.to(dt)


@full_float32()
def lambda_max(model: nn.Module, X: Tensor, *, kind: str = "full") -> float:
    """The largest eigenvalue of the NTK on ``X``."""
    vals, _ = top_eigenpairs(model, X, 1, kind=kind, method="dense")
    return float(vals[0])


@full_float32()
def critical_lr(model: nn.Module | None, X: Tensor | None, *, K: Tensor | None = None) -> float:
    """``η_crit = n·c / λ_max(K)`` (full kernel): the critical GD learning rate of the mean-MSE
    loss on ``X``, i.e. ``2 / λ_max`` of its Gauss-Newton Hessian. For a mini-batch ``X_B`` of
    size ``b`` this is ``η_crit(B) = b·c / λ_max(K_B)``. Exact for models linear in θ. With a
    precomputed full kernel ``K`` (``(n·c) × (n·c)``) the model and ``X`` are not used."""
    if K is not None:
        return critical_rate(K.shape[0], float(eig_top(K, 1)[0][0]))
    assert model is not None and X is not None
    X = on_model_device(model, X)
    with torch.no_grad():
        nc = model(X).numel()
    return critical_rate(nc, lambda_max(model, X, kind="full"))


def critical_rate(nc: int, lam_max: float) -> float:
    """``n·c / λ_max``; ``inf`` when the kernel is zero (every gradient vanishes on the batch or
    probe, e.g. all ReLUs dead there): no learning rate is above critical (written as null)."""
    return nc / lam_max if lam_max > 0 else math.inf


def split_from_eigvecs(residual: Tensor, U: Tensor) -> tuple[float, float, float]:
    """``(L, L_top, L_rest)`` from a flattened residual ``r`` (``(n·c,)``) and orthonormal
    eigenvectors ``U`` (``(n·c, s)``): ``L = |r|²/(nc)``, ``L_top = |Uᵀr|²/(nc)``."""
    r = residual.reshape(-1)
    N = r.numel()
    L = float(r.pow(2).sum() / N)
    top = float((U.T @ r).pow(2).sum() / N)
    return L, top, L - top


@full_float32()
def loss_split(model: nn.Module, X: Tensor, y: Tensor, k: int, *, K: Tensor | None = None,
               outputs: Tensor | None = None) -> tuple[float, float, float]:
    """``(L, L_top, L_rest)``: the mean-MSE loss on ``(X, y)`` and its parts inside and outside
    the span of the top-``k`` eigenvectors of the full NTK (docs/conventions.md). ``L_top +
    L_rest = L`` exactly; ``L_rest >= 0``. ``K``: the precomputed full kernel; ``outputs``: the
    precomputed ``model(X)`` (then the model is not run)."""
    _, U = top_eigenpairs(model, X, k, kind="full", method="dense", K=K)
    if outputs is None:
        with torch.no_grad():
            outputs = model(on_model_device(model, X))
    r = (outputs.reshape(X.shape[0], -1) - y.reshape(X.shape[0], -1).to(outputs)).reshape(-1)
    U = U.to(r.device)
    return split_from_eigvecs(r, U)


@dataclass(frozen=True)
class NTKSummary:
    """What one full kernel says (all from the same ``K``, computed once): ``eigenvalues``
    ``(k,)`` descending and ``eigenvectors`` ``(n·c, k)``; ``eta_crit = n·c/λ_1``; with targets,
    the split ``L = L_top + L_rest`` over the top ``s`` eigenvectors (else NaN); ``K`` itself
    when asked for (``keep_kernel=True``), else None."""

    eigenvalues: Tensor
    eigenvectors: Tensor
    eta_crit: float
    s: int
    L: float
    L_top: float
    L_rest: float
    K: Tensor | None = None


@full_float32()
def ntk_summary(model: nn.Module, X: Tensor, y: Tensor | None = None, k: int = 5, *,
                s: int | None = None, lr: float | None = None, v0: Tensor | None = None,
                keep_kernel: bool = False, **kernel_options) -> NTKSummary:
    """The spectrum, ``η_crit`` and the loss split from ONE full kernel and one forward pass.

    ``s`` (eigenvectors in the split): given, or the number of ``λ_i > n·c/lr`` when ``lr`` is
    given (at least 1), else 1; at most ``k``. ``kernel_options`` go to
    :func:`~catapults.curvature.ntk.empirical_ntk` (``method``, ``memory_budget``, ...)."""
    K, out = empirical_ntk(model, X, kind="full", return_outputs=True, **kernel_options)
    vals, vecs = eig_top(K, k, v0=v0)
    nc = K.shape[0]
    if s is None:
        s = max(1, int((vals > nc / lr).sum())) if lr else 1
    s = min(s, vals.numel())
    L = L_top = L_rest = float("nan")
    if y is not None:
        r = (out.reshape(X.shape[0], -1) - y.reshape(X.shape[0], -1).to(out)).reshape(-1)
        L, L_top, L_rest = split_from_eigvecs(r, vecs[:, :s])
    lam = float(vals[0])
    return NTKSummary(vals, vecs, critical_rate(nc, lam), s, L, L_top, L_rest,
                      K if keep_kernel else None)
