"""The training losses as functions of outputs and targets, shared by the trainer and the
Hessian form of sharpness (docs/conventions.md). The mean-MSE loss is exactly
``torch.nn.MSELoss(reduction="mean")`` over all ``n·c`` entries; cross-entropy is softmax CE for
one-hot targets ``(n, c)`` and the logistic loss for ±1 targets (``c = 1``).

The NTK form of the critical rate (``η_crit = n·c / λ_max(K)``) and the top-eigenspace loss
split hold for the mean MSE only; for cross-entropy only the Hessian form applies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from catapults.errors import KernelError

__all__ = ["LOSSES", "cross_entropy_loss", "get_loss", "mse_loss"]


def mse_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all ``n*c`` entries: ``torch.nn.MSELoss(reduction='mean')``."""
    return F.mse_loss(output, target.reshape(output.shape), reduction="mean")


def cross_entropy_loss(output: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy for one-hot targets ``(n, c)``; logistic loss for +-1 targets."""
    if output.shape[1] == 1:
        return F.softplus(-target.reshape(output.shape) * output).mean()
    return F.cross_entropy(output, target.argmax(1))


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": mse_loss, "cross_entropy": cross_entropy_loss}


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss called ``name`` (a key of :data:`LOSSES`)."""
    if name not in LOSSES:
        raise KernelError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {name!r}")
    return LOSSES[name]
