"""Dense layers in NTK or standard parameterisation (docs/conventions.md).

NTK parameterisation: a dense layer computes ``W x / sqrt(fan_in) + beta * b`` with
``W, b ~ N(0, 1)``. Standard: PyTorch's default ``nn.Linear`` initialisation, no extra factor.
:class:`ScaledLinear` exposes ``weight_scale`` and ``bias_scale`` and registers itself with the NTK
engine's linear-layer rules, so the fast per-layer kernel formula applies to it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from catapults.curvature.ntk import register_linear_rule


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
        if parameterization == "ntk":
            self.weight_scale = 1.0 / math.sqrt(in_features)
            self.bias_scale = float(bias_scale)
            with torch.no_grad():
                self.weight.normal_(generator=generator)
                if self.bias is not None:
                    self.bias.normal_(generator=generator)
        elif parameterization == "standard":
            # torch.nn.Linear.reset_parameters: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
            self.weight_scale, self.bias_scale = 1.0, 1.0
            bound = 1.0 / math.sqrt(in_features)
            with torch.no_grad():
                self.weight.uniform_(-bound, bound, generator=generator)
                if self.bias is not None:
                    self.bias.uniform_(-bound, bound, generator=generator)
        else:
            raise ValueError(
                f"parameterization must be 'ntk' or 'standard', got {parameterization!r}")

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight if self.weight_scale == 1.0 else self.weight * self.weight_scale
        if self.bias is None:
            return x @ w.T
        b = self.bias if self.bias_scale == 1.0 else self.bias * self.bias_scale
        return torch.addmm(b, x, w.T) if x.dim() == 2 else x @ w.T + b

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"parameterization={self.parameterization!r}")


register_linear_rule(ScaledLinear, lambda mod: (mod.weight_scale, mod.bias_scale))
