"""The true loss Hessian beside its Gauss-Newton part, matrix-free: top eigenpairs from
Hessian-vector products, Adam's preconditioned sharpness, and SGD's batch sharpness.

Conventions (docs/conventions.md): the loss is the mean MSE ``L(θ) = (1/(n·c)) Σ (f − y)²``
by default (every function takes ``loss="cross_entropy"`` too: the Hessian form holds for any
loss, while the NTK form ``2 λ_max(K)/(n·c)`` of its Gauss-Newton part is the MSE's);
``H = ∇²L = H_GN + (2/(n·c)) Σ_{i,j} r_ij ∇²f_j(x_i)`` (``r = f − y``), so ``H = H_GN`` for a
model linear in θ and differs for a nonlinear net by the residual-weighted second derivatives.

- :func:`hessian_top_eigenpairs`: the top-``k`` (largest, algebraic) eigenpairs of ``H`` by
  thick-restarted Lanczos (:func:`catapults.linalg.eigen.block_krylov_top`, one vector per
  step) on ``v ↦ H v + σ v``, each product one backward pass through a gradient graph built
  once per solve (reverse-over-reverse); ``v0`` warm-starts from previous eigenvectors. No
  shift by default: the solver's Rayleigh-Ritz step orders Ritz values algebraically, so the
  top of an indefinite ``H`` converges as it is (``shift=None`` first estimates ``|λ_min|`` by
  a short run on ``−H`` and solves on ``H + σI``). The default tolerance follows the model's
  dtype: ``1e-8`` in float64; in float32 ``10·eps ≈ 1.2e-6`` relative to each ``θ_i`` plus
  the same floor relative to ``√|θ_1 θ_i|``, what float32 products resolve.
- :func:`hessian_power_step`: one Hessian-vector product per call, for tracking ``λ_max``
  every training step: the Rayleigh quotient of the previous vector, its residual, and one
  power-iteration step.
- :func:`preconditioned_sharpness`: ``λ_max(P^{-1/2} H P^{-1/2})`` with Adam's ``P = diag(√v̂ +
  ε)``; Adam is stable while it is below ``(2 + 2β₁)/((1 − β₁) η)`` (38/η at β₁ = 0.9).
- :func:`batch_sharpness`: ``E_B[g_Bᵀ H_B g_B / ‖g_B‖²]`` over random batches of size ``b``
  (``g_B``, ``H_B`` the gradient and Hessian of the batch loss), by Monte Carlo with a stopping
  rule on the standard error and a normal 95% interval; SGD sits near ``2/η`` at its edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from catapults.curvature.checks import on_model_device, trainable_params
from catapults.curvature.losses import get_loss
from catapults.curvature.precision import exact_products, full_float32
from catapults.curvature.stability import _adam_scales, optimizer_edge
from catapults.errors import KernelError
from catapults.linalg.eigen import block_krylov_top, blocks_for

__all__ = ["BatchSharpness", "batch_sharpness", "hessian_power_step", "hessian_top_eigenpairs",
           "hvp_operator", "preconditioned_sharpness"]


def _flat_loss(model: nn.Module, X: Tensor, y: Tensor, loss: str = "mse"
               ) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``(loss(θ_flat), θ_flat)`` for the loss ``loss`` (:mod:`catapults.curvature.losses`) of
    ``model`` on ``(X, y)`` over its trainable parameters (flattened in ``trainable_params``
    order)."""
    # the mean MSE written out: F.mse_loss's forward-mode derivative meets ReLU's zero tensors
    # inside jvp(grad) and fails; the value is the same
    loss_fn = get_loss(loss) if loss != "mse" else (lambda out, t: (out - t).pow(2).mean())
    params = trainable_params(model)
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    buffers = dict(model.named_buffers())
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def value(vec: Tensor) -> Tensor:
        chunks = torch.split(vec, sizes)
        p = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        out = functional_call(model, (p, buffers), (X,))
        return loss_fn(out.reshape(y.shape), y)

    return value, theta


@exact_products
def hvp_operator(model: nn.Module, X: Tensor, y: Tensor, *, loss: str = "mse",
                 reuse_graph: bool = False) -> tuple[Callable[[Tensor], Tensor], int]:
    """``(V ↦ H V, p)``: the Hessian of the loss (mean MSE by default) times a block ``V`` of
    shape ``(p, b)`` (or a vector ``(p,)``), never forming ``H``.

    Two ways to take the product (same values to rounding):

    - ``reuse_graph=False`` (default): forward-over-reverse (``jvp`` of ``grad``), a forward and
      a backward pass with their tangents per product, nothing kept between calls: for one or a
      few products (tracking ``λ_max`` every step).
    - ``reuse_graph=True``: the gradient's graph is built once (``create_graph``) and every
      product is one backward pass through it (reverse-over-reverse, as PyHessian does): on the
      benchmark MLP one such product took 0.6× a forward-over-reverse one, after a build that
      costs about one training step. For the many products of an eigensolve. A block is one
      batched backward (``is_grads_batched``), which saved nothing per column there.
    """
    X = on_model_device(model, X)
    y = y.to(X.device).reshape(X.shape[0], -1)
    value, theta = _flat_loss(model, X, y, loss)
    if reuse_graph:
        return _graph_hvp(value, theta), theta.numel()
    g = grad(value)

    def hv(v: Tensor) -> Tensor:
        return jvp(g, (theta,), (v,))[1]

    def mv(V: Tensor) -> Tensor:
        V = V.to(theta.dtype)
        if V.dim() == 1:
            return hv(V).detach()
        return vmap(hv, in_dims=1, out_dims=1)(V).detach()

    return mv, theta.numel()


def _graph_hvp(value: Callable[[Tensor], Tensor], theta: Tensor) -> Callable[[Tensor], Tensor]:
    """``V ↦ H V`` by backward passes through one retained gradient graph of ``value`` at
    ``theta`` (:func:`hvp_operator`'s ``reuse_graph=True``)."""
    leaf = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(value(leaf), leaf, create_graph=True)[0]

    def mv(V: Tensor) -> Tensor:
        V = V.to(theta.dtype)
        if V.dim() == 1 or V.shape[1] == 1:
            out = torch.autograd.grad(g, leaf, V.reshape(-1), retain_graph=True)[0]
            return out.detach().reshape(V.shape)
        out = torch.autograd.grad(g, leaf, V.T.contiguous(), retain_graph=True,
                                  is_grads_batched=True)[0]
        return out.detach().T

    return mv


def _default_tol(model: nn.Module) -> tuple[float, float]:
    """``(tol, floor)`` of :func:`~catapults.linalg.eigen.block_krylov_top` by the model's
    dtype: ``(1e-8, 0)`` in float64; in float32 ``tol = floor = 10·eps ≈ 1.2e-6``: products are
    no more accurate than that relative to ``√|θ_1 θ_i|``, so without the floor a float32 solve
    at a tight ``tol`` on an eigenvalue far below ``θ_1`` never stops."""
    dtype = next((q.dtype for q in model.parameters() if q.is_floating_point()), torch.float64)
    eps = 10 * torch.finfo(dtype).eps
    return (1e-8, 0.0) if eps <= 1e-8 else (eps, eps)


BASIS_BYTES = 2 * 2**30


def _basis_blocks(p: int) -> int:
    """Lanczos steps between thick restarts: 50, fewer when the float64 basis of ``p``-vectors
    would pass :data:`BASIS_BYTES` (2 GiB), at least 10."""
    return int(min(50, max(10, BASIS_BYTES // (8 * p) - 1)))


@full_float32()
def hessian_top_eigenpairs(model: nn.Module, X: Tensor, y: Tensor, k: int = 1, *,
                           loss: str = "mse", v0: Tensor | None = None,
                           shift: float | None = 0.0, tol: float | None = None,
                           block: int = 1) -> tuple[Tensor, Tensor]:
    """The top-``k`` eigenvalues (descending, ``(k,)``) and orthonormal eigenvectors
    (``(p, k)``, ``p`` the trainable parameters in ``named_parameters`` order) of the Hessian of
    the loss on ``(X, y)`` (mean MSE or cross-entropy), matrix-free (module docstring).

    Thick-restarted Lanczos in float64 on products through one retained gradient graph
    (:func:`hvp_operator` with ``reuse_graph=True``), ``block`` vectors per step (1: a block
    of HVPs costs as much per column as single ones, and a single-vector Krylov space reaches
    a given accuracy in fewer products). ``tol`` bounds each relative residual
    ``‖Hu − θu‖/|θ|`` (default by the model's dtype, see :func:`_default_tol`).
    """
    X = on_model_device(model, X)  # the solver's vectors live beside the parameters
    mv, p = hvp_operator(model, X, y, loss=loss, reuse_graph=True)
    d_tol, floor = _default_tol(model)
    return _top_algebraic(lambda V: mv(V).double(), p, k, device=X.device, v0=v0, shift=shift,
                          tol=d_tol if tol is None else tol, floor=floor, block=block)


@full_float32()
def hessian_power_step(model: nn.Module, X: Tensor, y: Tensor, v: Tensor, *,
                       loss: str = "mse") -> tuple[float, float, Tensor]:
    """One Hessian-vector product at the model's current parameters: ``(θ, residual, v_next)``
    with ``θ = vᵀHv`` the Rayleigh quotient of the unit vector ``v`` (``(p,)``, float64),
    ``residual = ‖Hv − θv‖ / |θ|``, and ``v_next = Hv / ‖Hv‖`` (a power-iteration step).

    For tracking ``λ_max(H)`` during training at the cost of one product per measurement,
    warm from the previous measurement's vector: ``θ ≤ λ_max`` always, and some eigenvalue
    lies within ``residual·|θ|`` of ``θ`` (``λ_max − θ <= residual²·θ²/gap`` once ``v`` is
    close to the top eigenvector, ``gap`` to the second eigenvalue). Power iteration follows
    the eigenvalue of largest magnitude: start it from :func:`hessian_top_eigenpairs`'s vector
    and re-solve when the residual grows (as the sharpness monitor's ``track`` method does).
    The product goes through a retained gradient graph (``reuse_graph=True``): building it and
    one backward pass measured 0.95x the forward-over-reverse product on the benchmark MLP."""
    X = on_model_device(model, X)
    mv, p = hvp_operator(model, X, y, loss=loss, reuse_graph=True)
    v = v.detach().to(device=X.device, dtype=torch.float64).reshape(p)
    v = v / v.norm()
    w = mv(v).double()
    theta = float(v @ w)
    res = float((w - theta * v).norm()) / abs(theta) if theta != 0 else math.inf
    norm = w.norm()
    return theta, res, (w / norm if norm > 0 else v)


def _top_algebraic(op: Callable[[Tensor], Tensor], p: int, k: int, *,
                   device: torch.device, v0: Tensor | None = None, shift: float | None = 0.0,
                   tol: float = 1e-8, floor: float = 0.0, block: int = 1
                   ) -> tuple[Tensor, Tensor]:
    """Top-``k`` algebraic eigenpairs of a symmetric (possibly indefinite) operator ``op`` by
    the block Krylov solver on ``op + σ I`` (``σ = 0`` by default; ``None``: ``σ ≈ 1.1
    |λ_min|`` from a short run on ``-op``), ``block`` vectors per product."""
    blocks = blocks_for(_basis_blocks(p), block)
    if shift is None:
        neg, _ = block_krylov_top(lambda V: -op(V), p, 1, tol=1e-2, block=block,
                                  max_blocks=min(blocks, 20), max_restarts=2, device=device)
        shift = max(float(neg[0]), 0.0) * 1.1 + 1e-12
    shift = float(shift)
    vals, vecs = block_krylov_top(lambda V: op(V) + shift * V, p, k, v0=v0, tol=tol,
                                  floor=floor, block=block, max_blocks=blocks, device=device)
    return vals - shift, vecs


@full_float32()
def preconditioned_sharpness(model: nn.Module, X: Tensor, y: Tensor,
                             optimizer: torch.optim.Optimizer, *, tol: float | None = None,
                             loss: str = "mse") -> float:
    """``λ_max(P^{-1/2} H P^{-1/2})`` (= the top eigenvalue of ``P⁻¹H``) for Adam / AdamW's
    ``P = diag(√v̂ + ε)`` read from ``optimizer``'s state."""
    edge = optimizer_edge(optimizer)
    if edge["kind"] != "adam":
        raise KernelError("preconditioned_sharpness: the optimizer is not Adam / AdamW")
    scales = _adam_scales(model, optimizer, edge)
    names = list(trainable_params(model))
    d = torch.cat([scales[n].reshape(-1) for n in names]).double().sqrt()  # P^{-1/2}
    X = on_model_device(model, X)
    mv, p = hvp_operator(model, X, y, loss=loss, reuse_graph=True)
    d = d.to(X.device)

    def pre(V: Tensor) -> Tensor:
        return d[:, None] * mv(d[:, None] * V).double()

    d_tol, floor = _default_tol(model)
    vals, _ = _top_algebraic(pre, p, 1, device=X.device, shift=0.0,
                             tol=d_tol if tol is None else tol, floor=floor)
    return float(vals[0])


@dataclass
class BatchSharpness:
    """A Monte-Carlo estimate of batch sharpness: ``mean`` with its standard error ``se``, the
    normal 95% ``interval``, the number of batches drawn and whether the stopping rule
    (``se <= rel_se · |mean|``) was met."""

    mean: float
    se: float
    interval: tuple[float, float]
    batches: int
    converged: bool


def _one_batch(model: nn.Module, X: Tensor, y: Tensor, loss: str) -> float:
    value, theta = _flat_loss(model, X, y, loss)
    g_fn = grad(value)
    g = g_fn(theta)
    gg = float(g @ g)
    if gg == 0:
        return math.nan
    hg = jvp(g_fn, (theta,), (g,))[1]
    return float(g @ hg) / gg


@full_float32()
def batch_sharpness(model: nn.Module, X: Tensor, y: Tensor, batch_size: int, *,
                    rel_se: float = 0.02, min_batches: int = 20, max_batches: int = 2000,
                    generator: torch.Generator | None = None,
                    loss: str = "mse") -> BatchSharpness:
    """``E_B[g_Bᵀ H_B g_B / ‖g_B‖²]`` over batches of ``batch_size`` samples drawn without
    replacement from ``(X, y)``, each batch independently (module docstring). Draws batches
    until the standard error is at most ``rel_se`` of the mean (after ``min_batches``) or
    ``max_batches`` is reached; batches whose gradient vanishes are skipped."""
    n = X.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise KernelError(f"batch_sharpness: batch_size must be in 1..{n}, got {batch_size}")
    X = on_model_device(model, X)
    y = y.to(X.device).reshape(n, -1)
    gen = generator or torch.Generator().manual_seed(0)
    vals: list[float] = []
    draws = 0
    while draws < max_batches:
        idx = torch.randperm(n, generator=gen, device=gen.device)[:batch_size].to(X.device)
        draws += 1
        v = _one_batch(model, X[idx], y[idx], loss)
        if math.isfinite(v):
            vals.append(v)
        if len(vals) >= min_batches:
            est = _estimate(vals, True)
            if est.se <= rel_se * abs(est.mean):
                return est
    if len(vals) < 2:
        raise KernelError("batch_sharpness: fewer than 2 batches with a non-zero gradient")
    return _estimate(vals, False)


def _estimate(vals: list[float], converged: bool) -> BatchSharpness:
    """The mean of ``vals``, its standard error and normal 95% interval."""
    m = math.fsum(vals) / len(vals)
    se = math.sqrt(math.fsum((x - m) ** 2 for x in vals) / (len(vals) - 1)) / math.sqrt(len(vals))
    return BatchSharpness(m, se, (m - 1.96 * se, m + 1.96 * se), len(vals), converged)
