"""Wide ResNet (Zagoruyko & Komodakis 2016), pre-activation basic blocks, without dropout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from catapults.models.layers import ScaledConv2d, ScaledLinear, norm2d
from catapults.models.mlp import ACTIVATIONS, check_activation


class _Block(nn.Module):
    """``x + conv(act(norm(conv(act(norm(x))))))``; a 1x1 conv (with the stride) on the
    shortcut when the shape changes, applied to ``act(norm(x))`` as in the original WRN."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, activation: str,
                 opts: dict) -> None:
        super().__init__()
        dtype = opts["dtype"]
        self.norm1, self.act1 = norm2d(norm, cin, dtype=dtype), ACTIVATIONS[activation]()
        self.conv1 = ScaledConv2d(cin, cout, 3, stride=stride, padding=1, **opts)
        self.norm2, self.act2 = norm2d(norm, cout, dtype=dtype), ACTIVATIONS[activation]()
        self.conv2 = ScaledConv2d(cout, cout, 3, padding=1, **opts)
        self.shortcut = (ScaledConv2d(cin, cout, 1, stride=stride, **opts)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: Tensor) -> Tensor:
        o = self.act1(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        y = self.conv1(o)
        y = self.conv2(self.act2(self.norm2(y)))
        return skip + y


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: a 3x3 conv to 16 channels, three groups of
    ``N = (depth - 4) / 6`` blocks of widths ``16k, 32k, 64k`` (strides 1, 2, 2), then
    norm, activation, global average pool and a linear head. Input ``(n, C, H, W)``, output
    ``(n, out_dim)``. Every conv and the head are in the chosen parameterisation; ``norm``
    as in :func:`catapults.models.layers.norm2d` (BatchNorm: use eval mode for kernels).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_dim: int = 1,
        *,
        depth: int = 16,
        widen_factor: int = 4,
        norm: str = "group",
        activation: str = "relu",
        bias: bool = False,
        parameterization: str = "ntk",
        bias_scale: float = 1.0,
        seed: int | None = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6N+4 with N >= 1, got {depth}")
        check_activation(activation)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        opts = {"bias": bias, "parameterization": parameterization, "bias_scale": bias_scale,
                "generator": gen, "dtype": dtype}
        c, h, w = (int(s) for s in in_shape)
        self.in_shape, self.in_dim, self.out_dim = (c, h, w), c * h * w, out_dim
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = ScaledConv2d(c, 16, 3, padding=1, **opts)
        blocks: list[nn.Module] = []
        cin = 16
        for g, cout in enumerate(widths):
            for i in range(n):
                blocks.append(_Block(cin, cout, 2 if (g > 0 and i == 0) else 1, norm,
                                     activation, opts))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.norm, self.act = norm2d(norm, cin, dtype=dtype), ACTIVATIONS[activation]()
        self.head = ScaledLinear(cin, out_dim, **opts)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm(self.blocks(self.stem(x))))
        return self.head(y.mean(dim=(-2, -1)))
