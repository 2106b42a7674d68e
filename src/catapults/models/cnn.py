"""A plain convolutional network: conv layers, global average pool, linear head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from catapults.models.layers import ScaledConv2d, ScaledLinear, norm2d
from catapults.models.mlp import ACTIVATIONS, check_activation


class CNN(nn.Module):
    """``depth`` blocks ``conv(k x k, 'same' padding) -> norm -> activation [-> 2x2 pool]``, each
    with ``width`` channels, then a global average pool and a linear head to ``out_dim``.

    Input ``(n, C, H, W)`` with ``(C, H, W) = in_shape``; output ``(n, out_dim)``. ``pool``
    (``"max"`` / ``"avg"``, stride 2) follows a block while the feature map is at least 2 x 2, so
    small images keep working at any depth. Every conv and the head are in the chosen
    parameterisation (:class:`ScaledConv2d`, :class:`ScaledLinear`).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_dim: int = 1,
        *,
        width: int = 64,
        depth: int = 2,
        kernel_size: int = 3,
        pool: str = "none",
        norm: str = "none",
        activation: str = "relu",
        bias: bool = False,
        parameterization: str = "ntk",
        bias_scale: float = 1.0,
        seed: int | None = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        check_activation(activation)
        if pool not in ("none", "max", "avg"):
            raise ValueError(f"unknown pool {pool!r}; one of none, max, avg")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd ('same' padding), got {kernel_size}")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        c, h, w = (int(s) for s in in_shape)
        self.in_shape, self.in_dim, self.out_dim = (c, h, w), c * h * w, out_dim
        opts = {"bias": bias, "parameterization": parameterization, "bias_scale": bias_scale,
                "generator": gen, "dtype": dtype}
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [ScaledConv2d(c if i == 0 else width, width, kernel_size,
                                    padding=kernel_size // 2, **opts),
                       norm2d(norm, width, dtype=dtype), ACTIVATIONS[activation]()]
            if pool != "none" and min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.head = ScaledLinear(width, out_dim, **opts)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))
