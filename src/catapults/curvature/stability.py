"""The critical learning rate of the optimizer actually used: the rate at which the linearised
training dynamics on the current kernel lose stability (docs/conventions.md, "Stability edges
of other optimizers"; issue 14).

Notation: ``K = J Jᵀ`` the full empirical NTK on ``X`` (``n·c`` rows), ``H = (2/(n·c)) JᵀJ`` the
Gauss-Newton Hessian of the mean-MSE loss, so ``λ_max(H) = 2 λ_max(K) / (n·c)``. For an
eigen-direction of ``H`` with eigenvalue ``λ`` each optimizer's linearised update is a small
linear recurrence; it is stable while:

========================  ====================================================================
optimizer                 edge (the returned ``η_crit``)
========================  ====================================================================
GD / SGD                  ``η λ < 2``:            ``η_crit = 2 / λ_max(H) = n·c / λ_max(K)``
heavy-ball momentum β     ``η λ < 2 + 2β``:       ``η_crit = (1 + β) · n·c / λ_max(K)``
  (PyTorch's ``v ← βv + g``, ``θ ← θ − ηv``; with dampening ``d`` the gradient enters as
  ``(1 − d) g``, so ``η_crit`` is divided by ``1 − d``)
Nesterov (PyTorch's)      ``η λ (1 + 2β) < 2 + 2β``: ``η_crit = (1 + β)/(1 + 2β) · n·c/λ_max(K)``
Adam / AdamW, frozen P    ``η λ_max(P⁻¹H)(1 − β₁) < 2 + 2β₁`` with ``P = diag(√v̂ + ε)``:
                          ``η_crit = (1 + β₁)/(1 − β₁) · n·c / λ_max(J P⁻¹ Jᵀ)``
========================  ====================================================================

(Cohen et al. 2021 for momentum, Cohen et al. 2022 for Adam: ``38/η`` at ``β₁ = 0.9``; the
Nesterov edge by the same linear-stability computation.) SGD-style coupled weight decay ``w``
adds ``w`` to every eigenvalue of ``H``; Adam's moments are read from the optimizer's state
(``v̂ = v / (1 − β₂^t)``); Adam's weight decay (coupled or AdamW's decoupled) is not part of
the edge (``ignored_weight_decay`` in :func:`optimizer_edge`). Adam's edge treats
the preconditioner as frozen and ignores the bias correction of the first moment (its value
after many steps). Before Adam's first step there are no second moments and no edge: the
functions that need ``P`` refuse (:func:`adam_started` says whether it has stepped); a parameter
that has never been stepped (no gradient yet) has ``v = 0``, ``P = ε``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from catapults.curvature.checks import on_model_device, trainable_params
from catapults.curvature.ntk import empirical_ntk
from catapults.curvature.ntk_rules.generic import per_sample_jacobian
from catapults.curvature.precision import full_float32
from catapults.errors import KernelError
from catapults.linalg.gram import gram

__all__ = ["NTK_FORM_ONLY_MSE", "adam_inverse_preconditioner", "adam_started", "critical_lr",
           "edge_from_kernel", "optimizer_edge", "preconditioned_kernel"]


def optimizer_edge(optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """What the edge depends on, read from a ``torch.optim`` optimizer (its first parameter
    group): ``{"kind": "gd" | "momentum" | "nesterov" | "adam", "factor": f, ...}`` where
    ``η_crit = f · n·c / λ_max(kernel)`` and the kernel is ``K`` (or ``J P⁻¹ Jᵀ`` for Adam),
    plus ``weight_decay`` (coupled, added to λ_max(H)) and the hyperparameters used."""
    if optimizer is None:
        return {"kind": "gd", "factor": 1.0, "weight_decay": 0.0}
    group = optimizer.param_groups[0]
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        b1, b2 = (float(b) for b in group["betas"])
        return {"kind": "adam", "factor": (1 + b1) / (1 - b1), "beta1": b1, "beta2": b2,
                "eps": float(group["eps"]), "weight_decay": 0.0, "ignored_weight_decay": wd}
    if isinstance(optimizer, torch.optim.SGD):
        beta = float(group.get("momentum", 0.0) or 0.0)
        damp = float(group.get("dampening", 0.0) or 0.0)
        if beta == 0:
            return {"kind": "gd", "factor": 1.0, "weight_decay": wd}
        scale = 1.0 / (1.0 - damp) if damp < 1 else math.inf
        if group.get("nesterov", False):
            return {"kind": "nesterov", "factor": scale * (1 + beta) / (1 + 2 * beta),
                    "momentum": beta, "dampening": damp, "weight_decay": wd}
        return {"kind": "momentum", "factor": scale * (1 + beta), "momentum": beta,
                "dampening": damp, "weight_decay": wd}
    raise KernelError(f"critical_lr: no stability edge for {type(optimizer).__name__} (known: "
                      "SGD with or without momentum / Nesterov, Adam, AdamW)")


def edge_from_kernel(lam_max: float, nc: int, edge: dict[str, Any]) -> float:
    """``η_crit`` of the optimizer described by ``edge`` (:func:`optimizer_edge`) from the top
    eigenvalue ``lam_max`` of its kernel on ``nc`` rows: ``factor · 2 / (2 λ/(n·c) + w)``;
    ``inf`` for a zero kernel."""
    lam_h = 2 * lam_max / nc + edge["weight_decay"]
    return edge["factor"] * 2 / lam_h if lam_h > 0 else math.inf


def adam_started(optimizer: torch.optim.Optimizer) -> bool:
    """Whether an Adam-like optimizer has taken a step (some parameter has second moments)."""
    return any(float(optimizer.state.get(p, {}).get("step", 0)) > 0
               for g in optimizer.param_groups for p in g["params"])


def _adam_scales(model: nn.Module, optimizer: torch.optim.Optimizer,
                 edge: dict[str, Any]) -> dict[str, Tensor]:
    """``P⁻¹`` per trainable parameter name (``1 / (√v̂ + ε)``), from the optimizer's state.
    Refuses an optimizer that has not stepped yet (no second moments, no preconditioner)."""
    if not adam_started(optimizer):
        raise KernelError(f"{type(optimizer).__name__} has not taken a step yet: it has no "
                          "second moments, so its preconditioner P and its stability edge are "
                          "not defined; measure after its first step (or pass optimizer=None "
                          "for GD's edge)")
    by_id = {id(p): name for name, p in model.named_parameters()}
    scales: dict[str, Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = by_id.get(id(p))
            if name is None or not p.requires_grad:
                continue
            state = optimizer.state.get(p, {})
            v = state.get("exp_avg_sq")
            step = float(state.get("step", 0))
            if v is None or step == 0:
                v_hat = torch.zeros_like(p)
            else:
                v_hat = v / (1 - edge["beta2"] ** step)
            scales[name] = 1.0 / (v_hat.sqrt() + edge["eps"])
    return scales


def adam_inverse_preconditioner(model: nn.Module,
                                optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Adam's ``P⁻¹ = 1 / (√v̂ + ε)`` per trainable parameter name, read from ``optimizer``'s
    state as it is now (new tensors: a snapshot that later steps do not change). With
    :func:`preconditioned_kernel`'s ``inverse_preconditioner`` it gives the kernel of this
    moment after training has moved on."""
    edge = optimizer_edge(optimizer)
    if edge["kind"] != "adam":
        raise KernelError("adam_inverse_preconditioner: the optimizer is not Adam / AdamW")
    return _adam_scales(model, optimizer, edge)


@full_float32()
def preconditioned_kernel(model: nn.Module, X: Tensor,
                          optimizer: torch.optim.Optimizer | None = None, *,
                          inverse_preconditioner: dict[str, Tensor] | None = None) -> Tensor:
    """``J P⁻¹ Jᵀ`` (full, ``(n·c) × (n·c)``) with Adam's diagonal preconditioner
    ``P = diag(√v̂ + ε)`` read from ``optimizer``'s state: the kernel whose top eigenvalue sets
    Adam's edge. Computed from per-sample Jacobians (exact; the generic path's cost). Instead of
    the optimizer, ``inverse_preconditioner``: ``P⁻¹`` per parameter name as
    :func:`adam_inverse_preconditioner` returns it (one of the two, not both)."""
    if (optimizer is None) == (inverse_preconditioner is None):
        raise KernelError("preconditioned_kernel: give the optimizer or its "
                          "inverse_preconditioner (one of the two)")
    scales = inverse_preconditioner
    if optimizer is not None:
        edge = optimizer_edge(optimizer)
        if edge["kind"] != "adam":
            raise KernelError("preconditioned_kernel: the optimizer is not Adam / AdamW")
        scales = _adam_scales(model, optimizer, edge)
    X = on_model_device(model, X)
    names = list(trainable_params(model))
    missing = [n for n in names if n not in scales]
    if missing:
        raise KernelError(f"preconditioned_kernel: parameters {missing[:3]} are not in the "
                          "optimizer")
    J = per_sample_jacobian(model, X)  # columns in trainable_params order
    col = torch.cat([scales[n].reshape(-1).sqrt().to(J) for n in names])  # J's device too
    return gram(J * col)


NTK_FORM_ONLY_MSE = (
    "the NTK form of the critical rate (n·c / λ_max(K), scaled for the optimizer) holds for the "
    "mean-MSE loss only; for loss {loss!r} only the Hessian form applies: 2 / λ_max(H) from "
    "catapults.stability.hessian_top_eigenpairs(model, X, y, loss={loss!r}) (the sharpness "
    "monitor records it against the optimizer's threshold)")
"""The message for a non-MSE loss where the NTK form was asked for."""


@full_float32()
def critical_lr(model: nn.Module, X: Tensor,
                optimizer: torch.optim.Optimizer | None = None, *,
                K: Tensor | None = None, loss: str = "mse") -> float:
    """The learning rate at which ``optimizer``'s linearised dynamics on the kernel at ``X``
    lose stability (the table of the module docstring); ``None`` or plain SGD gives the GD
    value ``n·c / λ_max(K)`` of :func:`catapults.ntk.critical_lr`. ``K``: a precomputed full
    kernel (not for Adam, whose kernel is preconditioned). ``inf`` when the kernel is zero.
    ``loss``: only ``"mse"`` (another loss is refused: :data:`NTK_FORM_ONLY_MSE`)."""
    if loss != "mse":
        raise KernelError(f"critical_lr: {NTK_FORM_ONLY_MSE.format(loss=loss)}")
    edge = optimizer_edge(optimizer)
    if edge["kind"] == "adam":  # (a linearised model: its own Jacobian, the generic path)
        Kp = preconditioned_kernel(model, X, optimizer)
    else:
        Kp = K if K is not None else empirical_ntk(model, X, kind="full")
    lam = float(torch.linalg.eigvalsh(Kp.double())[-1])
    return edge_from_kernel(lam, Kp.shape[0], edge)
