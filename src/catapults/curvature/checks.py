"""Checks shared by every curvature quantity: the model must treat samples independently, and
inputs must sit on the model's device."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from catapults.errors import KernelError

_BATCH_MIXING = (nn.modules.batchnorm._BatchNorm,)


def check_per_sample(model: nn.Module | Callable[[Tensor], Tensor], X: Tensor,
                     *, probe: int = 4, quantity: str = "the per-sample kernel",
                     error: type[Exception] = KernelError) -> None:
    """Refuse models whose output for one sample depends on the other samples of the batch.

    BatchNorm layers in training mode are refused by name, without running them (running them
    would also update their statistics). Any other mixing (or randomness such as dropout in
    training mode) is caught numerically: the outputs of the first few samples computed alone
    must equal their outputs within the whole batch.
    """
    if isinstance(model, nn.Module):
        for name, mod in model.named_modules():
            if isinstance(mod, _BATCH_MIXING) and mod.training:
                raise error(
                    f"module {name or type(mod).__name__!r} ({type(mod).__name__}) is in training "
                    f"mode: its outputs mix the samples of a batch, so {quantity} is not "
                    "defined; call model.eval() first")
    if X.shape[0] < 2:
        return
    m = min(probe, X.shape[0] - 1)
    with torch.no_grad():
        full = model(X[: m + 1])
        alone = model(X[:m])
    full, alone = full[:m].reshape(m, -1), alone.reshape(m, -1)
    if not torch.isfinite(full).all():
        raise error("the model's outputs are not finite")
    scale = full.abs().max().clamp_min(1e-30)
    tol = 1e3 * torch.finfo(full.dtype).eps if full.is_floating_point() else 0.0
    if ((full - alone).abs().max() / scale) > tol:
        raise error(
            "the model's output for a sample depends on the other samples in the batch (or is "
            f"random, e.g. dropout in training mode), so {quantity} is not defined. "
            "Use model.eval() or a model without batch-mixing layers")


def on_model_device(model: nn.Module | Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    """``X`` on the device of ``model``'s parameters (a model trained on CUDA, data on CPU)."""
    p = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return X.to(p.device) if p is not None and p.device != X.device else X


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that take part in the kernel: ``{name: tensor}`` of those with
    ``requires_grad``."""
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


def kernel_module(model: nn.Module) -> nn.Module:
    """The module whose empirical NTK at its own parameters equals ``model``'s: ``model``
    itself, or ``model.tangent_module()`` when the model provides it (a model linear in its
    parameters around other weights, such as :class:`catapults.models.Linearized`, whose kernel
    is that of the network at its initialisation). The protocol lets the fast path compute
    such kernels; it must not change their value."""
    get = getattr(model, "tangent_module", None)
    return get() if callable(get) else model
