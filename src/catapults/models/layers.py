"""Layers in NTK or standard parameterisation (docs/conventions.md).

NTK parameterisation: a dense layer computes ``W x / sqrt(fan_in) + beta * b`` with
``W, b ~ N(0, 1)``; a convolution the same with ``fan_in = in_channels / groups x kernel area``.
Standard: PyTorch's default ``nn.Linear`` / ``nn.Conv2d`` initialisation, no extra factor.
:class:`ScaledLinear` and :class:`ScaledConv2d` expose ``weight_scale`` and ``bias_scale``;
:class:`ScaledLinear` registers itself with the NTK engine's linear-layer rules, so the fast
per-layer kernel formula applies to it. Normalisation layers (:func:`norm2d`) keep PyTorch's
affine init (weight 1, bias 0) and no scale in both parameterisations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catapults.curvature.ntk import register_conv_rule, register_linear_rule


class ScaledLinear(nn.Module):
    """``y = weight_scale * x @ W.T + bias_scale * b``; ``W`` is ``(out, in)``, ``b`` is ``(out,)``.

    Args:
        in_features, out_features: sizes.
        bias: whether to have ``b``.
        parameterization: ``"ntk"`` (``weight_scale = 1/sqrt(in)``, ``W, b ~ N(0, 1)``) or
            ``"standard"`` (``weight_scale = 1``, PyTorch's default uniform init).
        bias_scale: ``beta`` for the NTK parameterisation (1 for standard).
        generator: RNG for the initialisation (reproducible without global seeding).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = False,
        parameterization: str = "ntk",
        bias_scale: float = 1.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.parameterization = parameterization
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None
        self.weight_scale, self.bias_scale = _init(
            self.weight, self.bias, in_features, parameterization, bias_scale, generator)

    def forward(self, x: Tensor) -> Tensor:
        """Rescales ``W`` on every call. Multiplying the product instead would be cheaper at
        small batches (an SGD step on the width-1024 NTK MLP took 0.70x / 0.82x / 0.92x the time
        at batch 2 / 16 / 128), but it rounds differently when the scale is not a power of 2,
        and catapult dynamics amplify rounding: it flipped a claim of ``make demo``
        (alignment-vs-catapults, 0.8 to 0.6 over 3 seeds). Kept as it is so that results stay
        comparable with earlier runs."""
        w = self.weight if self.weight_scale == 1.0 else self.weight * self.weight_scale
        if self.bias is None:
            return x @ w.T
        b = self.bias if self.bias_scale == 1.0 else self.bias * self.bias_scale
        return torch.addmm(b, x, w.T) if x.dim() == 2 else x @ w.T + b

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"parameterization={self.parameterization!r}")


register_linear_rule(ScaledLinear, lambda mod: (mod.weight_scale, mod.bias_scale))


def _init(weight: Tensor, bias: Tensor | None, fan_in: int, parameterization: str,
          bias_scale: float, generator: torch.Generator | None) -> tuple[float, float]:
    """Initialise ``weight`` and ``bias`` in place; return ``(weight_scale, bias_scale)``.

    ``"ntk"``: N(0, 1), scales ``(1/sqrt(fan_in), bias_scale)``. ``"standard"``: PyTorch's
    default for ``nn.Linear`` and ``nn.Conv2d`` (``kaiming_uniform_(a=sqrt(5))``, which is
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weight and bias alike), scales ``(1, 1)``."""
    with torch.no_grad():
        if parameterization == "ntk":
            weight.normal_(generator=generator)
            if bias is not None:
                bias.normal_(generator=generator)
            return 1.0 / math.sqrt(fan_in), float(bias_scale)
        if parameterization == "standard":
            bound = 1.0 / math.sqrt(fan_in)
            weight.uniform_(-bound, bound, generator=generator)
            if bias is not None:
                bias.uniform_(-bound, bound, generator=generator)
            return 1.0, 1.0
    raise ValueError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}")


class ScaledConv2d(nn.Module):
    """``y = conv2d(x, weight_scale * W) + bias_scale * b`` with ``W`` of shape
    ``(out, in/groups, kh, kw)``; NTK parameterisation: ``weight_scale = 1/sqrt(fan_in)``,
    ``fan_in = in/groups x kh x kw``, ``W, b ~ N(0, 1)``; standard: PyTorch's ``nn.Conv2d``
    initialisation. Arguments as :class:`ScaledLinear`, plus those of ``F.conv2d``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        parameterization: str = "ntk",
        bias_scale: float = 1.0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups {groups} must divide in_channels {in_channels} and "
                             f"out_channels {out_channels}")
        self.in_channels, self.out_channels, self.kernel_size = (
            in_channels, out_channels, kernel_size)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.parameterization = parameterization
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size,
                                               kernel_size, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, dtype=dtype)) if bias else None
        self.fan_in = in_channels // groups * kernel_size * kernel_size
        self.weight_scale, self.bias_scale = _init(
            self.weight, self.bias, self.fan_in, parameterization, bias_scale, generator)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight if self.weight_scale == 1.0 else self.weight * self.weight_scale
        b = self.bias
        if b is not None and self.bias_scale != 1.0:
            b = b * self.bias_scale
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"bias={self.bias is not None}, parameterization={self.parameterization!r}")


register_conv_rule(ScaledConv2d, lambda mod: (mod.weight_scale, mod.bias_scale))


NORMS = ("none", "batch", "layer", "group")


def norm2d(kind: str, channels: int, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The normalisation of ``(n, C, H, W)`` feature maps named ``kind``: ``"batch"``
    (``BatchNorm2d``: mixes the samples of a batch in training mode, so kernels are taken in eval
    mode), ``"layer"`` (``GroupNorm(1, C)``: LayerNorm over C, H, W of each sample),
    ``"group"`` (``GroupNorm(gcd(C, 8), C)``) or ``"none"`` (identity). Affine weight 1, bias 0."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, dtype=dtype)
    if kind == "layer":
        return nn.GroupNorm(1, channels, dtype=dtype)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels, dtype=dtype)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; one of {', '.join(NORMS)}")
