"""Normalisation layers with an elementwise affine part, ``y = x̂ ∘ w + b``: ``nn.LayerNorm``,
``nn.GroupNorm``, ``nn.RMSNorm`` (no bias) and BatchNorm in eval mode (running statistics). The
normalised input ``x̂`` is recomputed from the recorded input without the affine part; the
per-sample gradients are ``Σ_positions g ∘ x̂`` (weight) and ``Σ_positions g`` (bias), small
(one number per channel or feature), so they are formed directly.

BatchNorm in training mode normalises with the statistics of the batch: a sample's output then
depends on the other samples, and the per-sample kernel is not defined (KernelError naming it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catapults.curvature.ntk_rules.registry import (
    Call,
    Factor,
    GradFactor,
    NTKRule,
    register_ntk_rule,
    sample_rows,
)
from catapults.errors import KernelError


def _affine_factors(xhat: Tensor, g: Tensor, c: int, channel_dim: int | None, want: set[str],
                    has_bias: bool) -> list[Factor]:
    """``g`` (``(b·c, *shape)``), ``xhat`` (``(b, *shape)``). The parameters live along
    ``channel_dim`` of ``shape`` (``None``: along the trailing dims of ``weight.shape``, given by
    the caller reshaping to ``(…, m)`` first)."""
    b = xhat.shape[0]
    if channel_dim is not None:  # (b, C, *spatial) -> (b, spatial, C)
        xhat = xhat.movedim(1, -1)
        g = g.movedim(1, -1)
    m = xhat.shape[-1]
    xv = xhat.reshape(b, 1, -1, m)
    gv = g.reshape(b, c, -1, m)
    parts = []
    if "weight" in want:
        parts.append((gv * xv).sum(2).reshape(b * c, m))
    if has_bias and "bias" in want:
        parts.append(gv.sum(2).reshape(b * c, m))
    return [GradFactor(parts[0] if len(parts) == 1 else torch.cat(parts, 1))]


class LayerNormRule(NTKRule):
    def factors(self, module, call: Call, want, n, c):
        x = call.input
        shape = tuple(module.normalized_shape)
        xhat = F.layer_norm(x, shape, None, None, module.eps)
        m = int(torch.Size(shape).numel())
        g = sample_rows(call.cot)
        return _affine_factors(xhat.reshape(x.shape[0], -1, m), g.reshape(g.shape[0], -1, m),
                               c, None, want, module.bias is not None)


class RMSNormRule(NTKRule):
    def factors(self, module, call: Call, want, n, c):
        x = call.input
        shape = tuple(module.normalized_shape)
        xhat = F.rms_norm(x, shape, None, module.eps)
        m = int(torch.Size(shape).numel())
        g = sample_rows(call.cot)
        return _affine_factors(xhat.reshape(x.shape[0], -1, m), g.reshape(g.shape[0], -1, m),
                               c, None, want, False)


class GroupNormRule(NTKRule):
    def factors(self, module, call: Call, want, n, c):
        x = call.input
        xhat = F.group_norm(x, module.num_groups, None, None, module.eps)
        return _affine_factors(xhat, sample_rows(call.cot), c, 1, want, module.bias is not None)


class BatchNormRule(NTKRule):
    def check(self, module, name):
        if module.training or module.running_mean is None:
            why = ("is in training mode" if module.training
                   else "has no running statistics (track_running_stats=False)")
            raise KernelError(
                f"module {name!r} ({type(module).__name__}) {why}: it normalises with the "
                "statistics of the batch, so a sample's output depends on the other samples and "
                "the per-sample kernel is not defined; call model.eval() first")

    def factors(self, module, call: Call, want, n, c):
        x = call.input
        shape = (1, -1) + (1,) * (x.dim() - 2)
        xhat = ((x - module.running_mean.view(shape))
                / torch.sqrt(module.running_var.view(shape) + module.eps))
        return _affine_factors(xhat, sample_rows(call.cot), c, 1, want, module.bias is not None)


register_ntk_rule(nn.LayerNorm, LayerNormRule())
register_ntk_rule(nn.GroupNorm, GroupNormRule())
register_ntk_rule(nn.RMSNorm, RMSNormRule())
register_ntk_rule(nn.modules.batchnorm._BatchNorm, BatchNormRule())
