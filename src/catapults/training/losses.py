"""Losses and evaluation. The losses themselves live in :mod:`catapults.curvature.losses` (the
Hessian form of sharpness uses them too): the mean-MSE loss is exactly
``torch.nn.MSELoss(reduction="mean")`` over all ``n·c`` entries (docs/conventions.md)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from catapults.curvature.losses import cross_entropy_loss, get_loss, mse_loss

__all__ = ["cross_entropy_loss", "error_rate", "evaluate", "get_loss", "mse_loss"]


def error_rate(output: Tensor, target: Tensor) -> float:
    """Classification error: sign for +-1 targets (c = 1), argmax for one-hot targets."""
    if output.shape[1] == 1:
        pred = torch.where(output > 0, 1.0, -1.0)
        return (pred != target.reshape(output.shape)).float().mean().item()
    return (output.argmax(1) != target.argmax(1)).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, X: Tensor, y: Tensor, loss_fn, *, classification: bool,
             chunk: int = 8192) -> tuple[float, float | None]:
    """(loss, error or None) of ``model`` on (X, y), in chunks of ``chunk`` samples."""
    if X.shape[0] == 0:
        return float("nan"), None
    outs = [model(X[i:i + chunk]) for i in range(0, X.shape[0], chunk)]
    out = torch.cat(outs)
    loss = loss_fn(out, y).item()
    return loss, (error_rate(out, y) if classification else None)
