"""Losses and evaluation. The mean-MSE loss is exactly ``torch.nn.MSELoss(reduction="mean")``
over all ``n·c`` entries (docs/conventions.md); cross-entropy is a trainer option only."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mse_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all ``n*c`` entries: ``torch.nn.MSELoss(reduction='mean')``."""
    return F.mse_loss(output, target.reshape(output.shape), reduction="mean")


def cross_entropy_loss(output: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy for one-hot targets ``(n, c)``; logistic loss for +-1 targets."""
    if output.shape[1] == 1:
        return F.softplus(-target.reshape(output.shape) * output).mean()
    return F.cross_entropy(output, target.argmax(1))


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    return {"mse": mse_loss, "cross_entropy": cross_entropy_loss}[name]


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
