"""Vision transformer (Dosovitskiy et al. 2021): patches, class token, positional embeddings,
pre-norm blocks of multi-head self-attention and MLP, written from scaled linear layers so that
both parameterisations apply and ``torch.func`` transforms (the NTK's per-sample path) work."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from catapults.models.layers import ScaledConv2d, ScaledLinear
from catapults.models.mlp import ACTIVATIONS, check_activation


class Attention(nn.Module):
    """Multi-head self-attention on ``(n, T, D)``: ``softmax(q kᵀ / sqrt(D/heads)) v`` per head,
    then an output projection. No mask, no dropout; each sample attends only to its own tokens."""

    def __init__(self, dim: int, heads: int, opts: dict) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = ScaledLinear(dim, 3 * dim, **opts)
        self.proj = ScaledLinear(dim, dim, **opts)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
        out = scores.softmax(dim=-1) @ v  # (n, h, t, d/h)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """``x + attn(LN(x))``, then ``x + mlp(LN(x))`` with ``mlp = Linear, act, Linear``."""

    def __init__(self, dim: int, heads: int, hidden: int, activation: str, opts: dict) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, dtype=opts["dtype"])
        self.attn = Attention(dim, heads, opts)
        self.norm2 = nn.LayerNorm(dim, dtype=opts["dtype"])
        self.mlp = nn.Sequential(ScaledLinear(dim, hidden, **opts), ACTIVATIONS[activation](),
                                 ScaledLinear(hidden, dim, **opts))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision transformer for ``(n, C, H, W)`` inputs, output ``(n, out_dim)``.

    Non-overlapping ``patch_size`` patches embedded by a strided :class:`ScaledConv2d` to
    ``width`` channels, a class token and positional embeddings (``nn.Parameter``s: N(0, 1) in
    the NTK parameterisation, unscaled; zeros and N(0, 0.02²) in the standard one, as
    torchvision), ``depth`` pre-norm blocks, a final LayerNorm of the class token and a linear
    head. LayerNorms keep weight 1, bias 0.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_dim: int = 1,
        *,
        width: int = 64,
        depth: int = 4,
        patch_size: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        activation: str = "gelu",
        bias: bool = False,
        parameterization: str = "ntk",
        bias_scale: float = 1.0,
        seed: int | None = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in in_shape)
        if h % patch_size or w % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide the image size {h}x{w}")
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        check_activation(activation)
        self.in_shape, self.in_dim, self.out_dim = (c, h, w), c * h * w, out_dim
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        opts = {"bias": bias, "parameterization": parameterization, "bias_scale": bias_scale,
                "generator": gen, "dtype": dtype}
        self.patch = ScaledConv2d(c, width, patch_size, stride=patch_size, **opts)
        tokens = (h // patch_size) * (w // patch_size) + 1
        self.cls_token = nn.Parameter(torch.empty(1, 1, width, dtype=dtype))
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, width, dtype=dtype))
        with torch.no_grad():
            if parameterization == "ntk":
                self.cls_token.normal_(generator=gen)
                self.pos_embedding.normal_(generator=gen)
            else:
                self.cls_token.zero_()
                self.pos_embedding.normal_(0.0, 0.02, generator=gen)
        hidden = max(1, round(mlp_ratio * width))
        self.blocks = nn.Sequential(*[Block(width, heads, hidden, activation, opts)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(width, dtype=dtype)
        self.head = ScaledLinear(width, out_dim, **opts)

    def forward(self, x: Tensor) -> Tensor:
        z = self.patch(x).flatten(2).transpose(1, 2)  # (n, T-1, D)
        cls = self.cls_token.expand(z.shape[0], -1, -1)
        z = torch.cat([cls, z], dim=1) + self.pos_embedding
        z = self.blocks(z)
        return self.head(self.norm(z[:, 0]))
