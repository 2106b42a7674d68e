"""Fully connected networks: flatten, then dense layers with activations."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from catapults.models.layers import ScaledLinear

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}


def check_activation(name: str) -> None:
    """Raise ``ValueError`` for an activation name not in :data:`ACTIVATIONS`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; one of {sorted(ACTIVATIONS)}")


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
        check_activation(activation)
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
