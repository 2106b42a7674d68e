"""Convolutions (``nn.Conv1d``, ``nn.Conv2d``: any stride, padding, padding mode, dilation,
groups; bias) as dense layers over patches: with the input unfolded to patches
``A_i ∈ R^{T × (in/groups)·k}`` (im2col, ``T`` output positions) and the output gradients
``g_i ∈ R^{T × out/groups}`` of each group, the per-sample weight gradient is ``g_iᵀ A_i``.

Which form (cost for ``n`` samples, ``c`` outputs, ``da = (in/groups)·k``, ``dg = out/groups``):

- per-sample gradients: ``n·c·T·dg·da`` to form them, ``(n·c)²·dg·da/2`` for their Gram;
- Hadamard over positions, ``Σ_{s,t} (g_is·g_jt)(a_is·a_jt)``: ``(n·T)²·(da + c·dg)/2``, and
  ``(n·T)²`` memory.

On images ``T`` is large (256 positions for a 16×16 map), so per-sample gradients win by far
(formed by a vmapped VJP of the convolution alone, not by im2col, which was the slow part); the
Hadamard form is used only when the output map is tiny (``T`` of a few positions: a last
convolution on a 1×1 or 2×2 map), its cost is lower and the module runs once per forward pass
(a shared convolution always uses per-sample gradients, summed over its calls). Patches are
unfolded in chunks of samples so that no more than about 64 MB of patches exist at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp, vmap

from catapults.curvature.ntk_rules.registry import (
    Call,
    Factor,
    GradFactor,
    HadamardFactor,
    NTKRule,
    register_ntk_rule,
    sample_rows,
)

PATCH_BYTES = 64 * 2**20


def _patches(mod: nn.Module, x: Tensor) -> Tensor:
    """im2col of ``x`` for ``mod``: ``(b, in·k, T)``; 1-d convolutions as 2-d with height 1."""
    if mod.padding_mode == "zeros":
        x = F.pad(x, mod._reversed_padding_repeated_twice)
    else:
        x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
    if x.dim() == 3:
        x = x.unsqueeze(2)
        ks, dil, st = (1, *mod.kernel_size), (1, *mod.dilation), (1, *mod.stride)
    else:
        ks, dil, st = mod.kernel_size, mod.dilation, mod.stride
    return F.unfold(x, ks, dilation=dil, padding=0, stride=st)


def hadamard_cheaper(n: int, c: int, T: int, da: int, dg: int) -> bool:
    """The cost model above; True when the Hadamard form is cheaper and its ``(n·T)²`` Gram
    matrices stay small (at most 2^24 entries)."""
    had = (n * T) ** 2 * (da + c * dg) / 2
    grad = n * c * T * dg * da + (n * c) ** 2 * dg * da / 2
    return had < grad and (n * c * T) ** 2 <= 2**24


def _weight_grads(mod: nn.Module, x: Tensor, g: Tensor, c: int) -> Tensor:
    """Per-sample weight gradients ``(b, c, *weight.shape)``: the VJP of the convolution of one
    sample with respect to the weight, vmapped over samples and outputs (torch lowers it to
    one grouped convolution, which measured 4-5x faster than im2col + batched matmul here)."""
    w = mod.weight.detach()
    gv = g.reshape(x.shape[0], c, *g.shape[1:])

    def one(xi: Tensor, gi: Tensor) -> Tensor:
        _, pull = vjp(lambda ww: mod._conv_forward(xi.unsqueeze(0), ww, None), w)
        return vmap(lambda gg: pull(gg.unsqueeze(0))[0])(gi)

    out = []
    step = max(1, PATCH_BYTES // max(1, (w.numel() * c + x[0].numel()) * x.element_size()))
    for i in range(0, x.shape[0], step):
        out.append(vmap(one)(x[i:i + step], gv[i:i + step]))
    return out[0] if len(out) == 1 else torch.cat(out)


class ConvRule(NTKRule):
    """``weight`` ``(out, in/groups, *k)``, ``bias`` ``(out,)`` or None."""

    per_sample = True

    def factors(self, module: nn.Module, call: Call, want: set[str], n: int,
                c: int) -> list[Factor]:
        x = call.input
        if x.dim() == module.weight.dim() - 1:  # unbatched input
            raise NotImplementedError
        b = x.shape[0]
        g = sample_rows(call.cot)  # (b·c, out, *spatial)
        out = g.shape[1]
        g = g.reshape(b * c, out, -1)  # (b·c, out, T)
        T = g.shape[2]
        groups = module.groups
        dg = out // groups
        da = module.weight[0].numel()
        has_w, has_b = "weight" in want, "bias" in want and module.bias is not None
        if not call.shared and hadamard_cheaper(n, c, T, da, dg):
            A = _patches(module, x).transpose(1, 2) if has_w else None  # (b, T, in·k)
            fs: list[Factor] = []
            for gi in range(groups):
                H = g[:, gi * dg:(gi + 1) * dg].transpose(1, 2)
                Fg = None if A is None else A[:, :, gi * da:(gi + 1) * da]
                fs.append(HadamardFactor(H, Fg, 1.0, 1.0 if has_b else 0.0))
            return fs
        parts = []
        if has_w:
            parts.append(_weight_grads(module, x, sample_rows(call.cot), c).reshape(b * c, -1))
        if has_b:
            parts.append(g.sum(2))
        return [GradFactor(parts[0] if len(parts) == 1 else torch.cat(parts, 1))]


register_ntk_rule(nn.Conv1d, ConvRule())
register_ntk_rule(nn.Conv2d, ConvRule())
