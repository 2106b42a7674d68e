"""Slow, independent float64 references that the fast routines are tested against, written once
for the whole suite: finite-difference and ``vmap(jacrev)`` Jacobians and kernels, critical
learning rates from ``torch.linalg.eigvalsh``, finite-difference input gradients (AGOP) and dense
loss Hessians. None of them calls the code under test."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.nn.utils import parameters_to_vector, vector_to_parameters


def fd_jacobian(model: nn.Module, X: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central finite-difference Jacobian ``(n*c, p)`` over all parameters, sample-major rows."""
    theta = parameters_to_vector(model.parameters()).detach().clone()
    cols = []
    with torch.no_grad():
        for k in range(theta.numel()):
            e = torch.zeros_like(theta)
            e[k] = h
            vector_to_parameters(theta + e, model.parameters())
            fp = model(X).reshape(-1)
            vector_to_parameters(theta - e, model.parameters())
            fm = model(X).reshape(-1)
            cols.append((fp - fm) / (2 * h))
        vector_to_parameters(theta, model.parameters())
    return torch.stack(cols, 1)


def vmap_jacobian(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """``vmap(jacrev)`` Jacobian ``(n*c, p)`` over the trainable parameters (one chunk)."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = dict(model.named_buffers())

    def f(p, x):
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).reshape(-1)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, X)
    n, c = next(iter(jac.values())).shape[:2]
    return torch.cat([v.reshape(n * c, -1) for v in jac.values()], dim=1)


def trace_kernel(K: torch.Tensor, n: int) -> torch.Tensor:
    """``Σ_j K_jj`` (n × n) of a full ``(n*c) × (n*c)`` kernel."""
    c = K.shape[0] // n
    return K.view(n, c, n, c).diagonal(dim1=1, dim2=3).sum(-1)


def reference_kernel(model: nn.Module, X: torch.Tensor, kind: str = "full",
                     how: str = "fd") -> torch.Tensor:
    """The NTK from a finite-difference (``how="fd"``) or ``vmap(jacrev)`` Jacobian."""
    J = fd_jacobian(model, X) if how == "fd" else vmap_jacobian(model, X)
    K = J @ J.T
    return trace_kernel(K, X.shape[0]) if kind == "trace" else K


def reference_critical_lr(model: nn.Module, X: torch.Tensor) -> float:
    """``n·c / λ_max(K)`` with K from a ``vmap(jacrev)`` Jacobian in float64 and ``eigvalsh``."""
    model64 = _float64_copy(model)
    K = reference_kernel(model64, X.double(), how="vmap")
    return K.shape[0] / float(torch.linalg.eigvalsh(K)[-1])


def _float64_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()


def fd_input_gradients(f, X: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central finite differences of ``f`` over each input coordinate: ``(n, c, d)``.

    Perturbing coordinate k of all samples at once is exact for per-sample f."""
    n = X.shape[0]
    flat = X.reshape(n, -1)
    cols = []
    with torch.no_grad():
        for k in range(flat.shape[1]):
            e = torch.zeros_like(flat)
            e[:, k] = h
            fp = f((flat + e).reshape(X.shape)).reshape(n, -1)
            fm = f((flat - e).reshape(X.shape)).reshape(n, -1)
            cols.append((fp - fm) / (2 * h))
    return torch.stack(cols, dim=2)


def dense_mse_hessian(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                      loss_of=None) -> torch.Tensor:
    """The dense Hessian ``(p, p)`` of the mean-MSE loss over all parameters (autograd), or of
    ``loss_of(outputs, y)`` when given (written out in the test, not the toolkit's)."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = parameters_to_vector(model.parameters()).detach()

    def loss(vec):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            m = int(torch.Size(shape).numel())
            params[name] = vec[i:i + m].reshape(shape)
            i += m
        out = functional_call(model, params, (X,))
        if loss_of is not None:
            return loss_of(out, y)
        return ((out.reshape(y.shape) - y) ** 2).mean()

    return torch.autograd.functional.hessian(loss, theta)


def moment_agop(poly: dict, d: int) -> torch.Tensor:
    """``E[∇f ∇fᵀ]`` of a polynomial ``{exponents: coefficient}`` under ``x ~ N(0, I_d)``, the
    slow way: multiply the gradient polynomials of every pair and take Gaussian moments."""
    import math
    from fractions import Fraction

    def moment(k):
        return 0 if k % 2 else math.prod(range(k - 1, 0, -2))

    grads = []
    for i in range(d):
        g: dict = {}
        for k, v in poly.items():
            if k[i] > 0:
                kk = list(k)
                kk[i] -= 1
                g[tuple(kk)] = g.get(tuple(kk), Fraction(0)) + v * k[i]
        grads.append(g)
    G = torch.zeros(d, d, dtype=torch.float64)
    for a in range(d):
        for b in range(a, d):
            val = sum((va * vb * math.prod(moment(x + y) for x, y in zip(ka, kb))
                       for ka, va in grads[a].items() for kb, vb in grads[b].items()),
                      Fraction(0))
            G[a, b] = G[b, a] = float(val)
    return G
