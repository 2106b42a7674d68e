"""Models: fully connected networks in NTK or standard parameterisation (SPEC.md section 1).

NTK parameterisation: a dense layer computes ``W x / sqrt(fan_in) + beta * b`` with
``W, b ~ N(0, 1)``. Standard: PyTorch's default ``nn.Linear`` initialisation, no extra factor.
Both are :class:`ScaledLinear` layers, which expose ``weight_scale`` and ``bias_scale`` so that
the NTK engine can use its fast per-layer formula on them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from catapults.config import ModelConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}


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


class MLP(nn.Module):
    """Fully connected network: flatten, then ``depth`` ScaledLinear layers with activations.

    Input ``(n, ...)`` (flattened to ``(n, in_dim)``), output ``(n, out_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 1,
        *,
        width: int = 1024,
        depth: int = 2,
        activation: str = "relu",
        bias: bool = False,
        parameterization: str = "ntk",
        bias_scale: float = 1.0,
        seed: int | None = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; one of {sorted(ACTIVATIONS)}")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(ScaledLinear(a, b, bias=bias, parameterization=parameterization,
                                       bias_scale=bias_scale, generator=gen, dtype=dtype))
            if i < depth - 1:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_model(cfg: ModelConfig, *, in_dim: int, out_dim: int, seed: int,
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model described by the ``model`` config section (``out_dim`` unless overridden)."""
    return MLP(in_dim, cfg.out_dim or out_dim, width=cfg.width, depth=cfg.depth,
               activation=cfg.activation, bias=cfg.bias, parameterization=cfg.parameterization,
               bias_scale=cfg.bias_scale, seed=seed, dtype=dtype)
