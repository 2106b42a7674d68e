"""Convolutions (``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d``, and conv-like modules registered
with :func:`register_conv_rule`, such as the NTK-parameterised
:class:`catapults.models.ScaledConv2d`): any stride, padding (numbers, ``"same"``,
``"valid"``), padding mode, dilation, groups; bias; weight and bias scales
``y = conv(x, sw·W) + sb·b``.

A convolution is a dense layer over patches: with the input unfolded to patches
``A_i ∈ R^{da × T}`` (im2col; ``da = (in/groups)·k``, ``T`` output positions) and the output
gradients ``g_i ∈ R^{dg × T}`` of each group (``dg = out/groups``), the per-sample weight
gradient is ``sw · A_i g_iᵀ`` (``da × dg``, the weight's entries in another order, which a Gram
product does not see).

Which form (cost for ``n`` samples, ``c`` outputs):

- per-sample gradients: ``n·c·T·dg·da`` to form them, ``(n·c)²·dg·da/2`` for their Gram;
- Hadamard over positions, ``Σ_{s,t} (g_is·g_jt)(a_is·a_jt)``: ``(n·T)²·(da + c·dg)/2``, and
  ``(n·T)²`` memory.

On images ``T`` is large (256 positions for a 16×16 map), so per-sample gradients win by far;
the Hadamard form is used only when the output map is tiny (``T`` of a few positions: a last
convolution on a 1×1 or 2×2 map), its cost is lower and the module runs once per forward pass
(a shared convolution always uses per-sample gradients, summed over its calls).

How the per-sample gradients are formed (measured, docs/benchmarks.md, "NTK layer rules"): the
patches of a chunk of samples are one strided copy of the padded input (``as_strided``: no
``F.unfold``, which was 5-20x slower here), and the gradients of the chunk are one batched
matrix product ``(chunk·groups, da, T) × (chunk·groups, T, c·dg)``: the ``c`` outputs of a
sample share its patches, and ``sw`` is applied inside the product. Chunks hold about
:data:`PATCH_BYTES` of patches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from catapults.curvature.ntk_rules.registry import (
    Call,
    Factor,
    GradFactor,
    HadamardFactor,
    NTKRule,
    named_params,
    register_ntk_rule,
    sample_rows,
)
from catapults.errors import KernelError

PATCH_BYTES = 16 * 2**20
"""Bytes of patches unfolded at once (a chunk of samples)."""

ConvScales = Callable[[nn.Module], tuple[float, float]]


@dataclass(frozen=True)
class ConvGeometry:
    """What the patches of a convolution with ``nd`` spatial dimensions depend on."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad: tuple[int, ...]  # F.pad order: (last-left, last-right, ..., first-left, first-right)
    padding_mode: str
    groups: int


def _tuple(v: int | tuple[int, ...] | list[int], nd: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * nd


def geometry(mod: nn.Module) -> ConvGeometry:
    """The geometry of ``mod`` from its weight ``(out, in/groups, *kernel)`` and its attributes
    ``stride``, ``padding`` (number, tuple, ``"same"`` or ``"valid"``), ``dilation``,
    ``groups`` and ``padding_mode`` (defaults 1, 0, 1, 1, ``"zeros"``)."""
    kernel = tuple(mod.weight.shape[2:])
    nd = len(kernel)
    dil = _tuple(getattr(mod, "dilation", 1), nd)
    padding = getattr(mod, "padding", 0)
    if padding == "valid":
        pairs = [(0, 0)] * nd
    elif padding == "same":  # as torch: the extra one goes to the right
        pairs = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for d, k in zip(dil, kernel)]
    else:
        pairs = [(p, p) for p in _tuple(padding, nd)]
    pad = tuple(v for pair in reversed(pairs) for v in pair)
    return ConvGeometry(kernel, _tuple(getattr(mod, "stride", 1), nd), dil, pad,
                        getattr(mod, "padding_mode", "zeros"), int(getattr(mod, "groups", 1)))


def channels_last(x: Tensor) -> bool:
    """True when ``x`` ``(b, C, *spatial)`` has its channels innermost in memory."""
    return x.dim() >= 3 and x.shape[1] > 1 and x.stride(1) == 1 and not x.is_contiguous()


def patches(geo: ConvGeometry, x: Tensor) -> Tensor:
    """im2col of ``x`` ``(b, in, *spatial)``: ``(b, groups, da, T)`` with ``da`` ordered as
    ``(*kernel, in/groups)`` and ``T`` the output positions in order, whatever the memory
    layout of ``x``. One strided copy of the padded input, ordered for the layout: patch rows
    ``(b, groups, T, da)`` returned transposed for channels-last inputs (contiguous runs of
    channels), ``(b, groups, da, T)`` otherwise (contiguous runs of positions); a view when no
    copy is needed (a 1×1 convolution with stride 1)."""
    if any(geo.pad):
        mode = "constant" if geo.padding_mode == "zeros" else geo.padding_mode
        x = F.pad(x, geo.pad, mode=mode)  # keeps the memory layout
    if not (x.is_contiguous() or channels_last(x)):
        x = x.contiguous()
    b, cin, *sp = x.shape
    G = geo.groups
    cg = cin // G
    out = [(s - d * (k - 1) - 1) // st + 1
           for s, k, d, st in zip(sp, geo.kernel, geo.dilation, geo.stride)]
    st = x.stride()
    ker = [(k, d * s) for k, d, s in zip(geo.kernel, geo.dilation, st[2:])]
    pos = [(o, t * s) for o, t, s in zip(out, geo.stride, st[2:])]
    kk = T = 1
    for k in geo.kernel:
        kk *= k
    for o in out:
        T *= o
    head = [(b, st[0]), (G, st[1] * cg)]
    if channels_last(x):  # (b, G, *out, *k, cg): runs of channels
        dims = head + pos + ker + [(cg, st[1])]
        return _strided(x, dims).reshape(b, G, T, kk * cg).transpose(2, 3)
    dims = head + ker + [(cg, st[1])] + pos  # (b, G, *k, cg, *out): runs of positions
    return _strided(x, dims).reshape(b, G, kk * cg, T)


def _strided(x: Tensor, dims: list[tuple[int, int]]) -> Tensor:
    return x.as_strided([d for d, _ in dims], [s for _, s in dims], x.storage_offset())


def hadamard_cheaper(n: int, c: int, T: int, da: int, dg: int) -> bool:
    """The cost model above; True when the Hadamard form is cheaper and its ``(n·T)²`` Gram
    matrices stay small (at most 2^24 entries)."""
    had = (n * T) ** 2 * (da + c * dg) / 2
    grad = n * c * T * dg * da + (n * c) ** 2 * dg * da / 2
    return had < grad and (n * c * T) ** 2 <= 2**24


def weight_grads(geo: ConvGeometry, x: Tensor, cot: Tensor, sw: float = 1.0) -> Tensor:
    """Per-sample weight gradients ``(b·c, groups·da·dg)`` (sample-major rows; columns in the
    order ``(group, *kernel, in/groups, out/groups)`` whatever the memory layout) of a
    convolution with input ``x`` ``(b, in, *spatial)`` and output cotangents ``cot``
    ``(c, b, out, *out_spatial)``, scaled by ``sw``; chunks of samples hold about
    :data:`PATCH_BYTES` of patches."""
    c, b, out = cot.shape[:3]
    G = geo.groups
    dg = out // G
    T = cot[0, 0, 0].numel()
    # (b·G, T, c·dg): the c outputs of a sample side by side (a view of the cotangent when
    # c = 1 and groups = 1, in either memory layout)
    gop = cot.flatten(3).unflatten(2, (G, dg)).permute(1, 2, 4, 0, 3).reshape(b * G, T, c * dg)
    da = x.shape[1] // G
    for k in geo.kernel:
        da *= k
    Gw = torch.empty(b * c, G * da * dg, dtype=x.dtype, device=x.device)
    step = max(1, PATCH_BYTES // max(1, G * da * T * x.element_size()))
    for i in range(0, b, step):
        s = min(step, b - i)
        P = patches(geo, x[i:i + step]).flatten(0, 1)  # (s·G, da, T)
        B = gop[i * G:(i + s) * G]
        if c == 1:
            torch.baddbmm(P.new_zeros(()), P, B, beta=0.0, alpha=sw,
                          out=Gw[i:i + s].view(s * G, da, dg))
        else:
            prod = torch.baddbmm(P.new_zeros(()), P, B, beta=0.0, alpha=sw)
            Gw[i * c:(i + s) * c].view(s, c, G, da, dg).copy_(
                prod.view(s, G, da, c, dg).permute(0, 3, 1, 2, 4))
    return Gw


class ConvRule(NTKRule):
    """``weight`` ``(out, in/groups, *k)``, ``bias`` ``(out,)`` or None, scaled by
    ``scales(module)`` = ``(sw, sb)`` (default ``(1, 1)``)."""

    # The same work as the generic path's per-sample gradients (one forward, one backward, the
    # per-sample weight gradients, their Gram): measured 1.2-1.5x less CPU time on one thread
    # at n = 1000, but not faster in wall time on two threads of the loaded shared machine
    # (docs/benchmarks.md), so method="auto" keeps the generic path for conv nets.
    per_sample = True
    fast_on_cuda = True

    def __init__(self, scales: ConvScales | None = None) -> None:
        self.scales = scales

    def params(self, module: nn.Module) -> dict[str, nn.Parameter]:
        return named_params(module, ("weight", "bias"))

    def factors(self, module: nn.Module, call: Call, want: set[str], n: int,
                c: int) -> list[Factor]:
        x = call.input
        if x.dim() == module.weight.dim() - 1:
            raise KernelError(f"the NTK conv rule needs batched inputs; {type(module).__name__} "
                              f"got one of shape {tuple(x.shape)}")
        sw, sb = self.scales(module) if self.scales is not None else (1.0, 1.0)
        geo = geometry(module)
        b = x.shape[0]
        cot = call.cot  # (c, b, out, *spatial)
        out = cot.shape[2]
        T = cot[0, 0, 0].numel()
        G = geo.groups
        dg = out // G
        da = module.weight[0].numel()
        has_w, has_b = "weight" in want, "bias" in want and module.bias is not None
        if not call.shared and hadamard_cheaper(n, c, T, da, dg):
            A = patches(geo, x) if has_w else None  # (b, G, da, T)
            g = sample_rows(cot).reshape(b * c, out, T)
            fs: list[Factor] = []
            for gi in range(G):
                H = g[:, gi * dg:(gi + 1) * dg].transpose(1, 2)
                Fg = None if A is None else A[:, gi].transpose(1, 2)
                fs.append(HadamardFactor(H, Fg, float(sw), float(sb) if has_b else 0.0))
            return fs
        fs = []
        if has_w:
            fs.append(GradFactor(weight_grads(geo, x, cot, float(sw))))
        if has_b:
            gb = cot.reshape(c, b, out, T).sum(3).transpose(0, 1).reshape(b * c, out)
            fs.append(GradFactor(gb * sb if sb != 1.0 else gb))
        return fs


def register_conv_rule(cls: type[nn.Module], scales: ConvScales) -> None:
    """Let the rules path handle modules of type ``cls`` (and its subclasses) as convolutions
    ``y = conv(x, sw·W) + sb·b``: ``scales(module)`` returns ``(sw, sb)``; the module has
    ``.weight`` ``(out, in/groups, *kernel)``, ``.bias`` (or None) and the attributes read by
    :func:`geometry`. :class:`catapults.models.ScaledConv2d` registers itself this way."""
    register_ntk_rule(cls, ConvRule(scales))


for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_ntk_rule(_cls, ConvRule())
