"""The generic NTK path: per-sample Jacobians from ``torch.func.vmap(jacrev)``, over any subset of
the trainable parameters (the others held fixed), in chunks sized from a memory budget.

Chunk size. ``vmap(jacrev)`` on ``b`` samples holds the Jacobian chunk (``b·c·p`` numbers) and,
for the backward passes of the ``c`` outputs, about ``b·(c+1)`` copies of the activations of one
sample. :func:`bytes_per_sample` measures the activations with one forward pass on one sample
(the outputs of every leaf module), and :func:`chunk_for` takes as many samples per chunk as fit
in ``memory_budget`` and keep the largest activation (output of a leaf module) of a chunk under
:data:`CHUNK_ACTIVATION_BYTES`, so that feature maps stay in cache between the layers of the
forward and backward passes. Measured side by side on a quiet 2-core AMD EPYC, 2 threads
(docs/benchmarks.md, "generic chunks"): on the issue's CNN (64-channel 3×3 convolutions)
unchunked ``vmap(jacrev)`` took 1.24 s / 3.38 s at n = 1000 (3×16×16 / 3×32×32) against
0.95 s / 2.17-2.22 s in chunks of 32-128 samples (4-8 MB of the largest activation); small
models whose activations fit anyway (a 16-channel CNN on 8×8 digits, n = 360; a GroupNorm
residual block, n = 256) stay unchunked, which is fastest for them (a fixed chunk of 64 was 1.7x
slower there because of the per-chunk overhead of vmap).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from catapults.curvature.precision import full_float32
from catapults.linalg.gram import gram, mirror_upper_


class Probe(NamedTuple):
    """What one forward pass on one sample tells: the numbers in the outputs of all leaf
    modules (an activation-size proxy), in the largest of them, in the model's output (``c``),
    the output's dtype, and which of the watched modules were called on an input with more
    than two dimensions (tokens, patches, images)."""

    total: int
    largest: int
    outputs: int
    dtype: torch.dtype
    wide_inputs: frozenset[str] | None = None  # None: made without ``watch``

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize


def activation_sizes(model: nn.Module, x1: Tensor, *,
                     watch: dict[str, nn.Module] | None = None) -> Probe:
    """:class:`Probe` of ``model`` on the one sample ``x1`` (one forward pass, no graph), with
    the modules of ``watch`` (``{name: module}``) checked for inputs of more than two
    dimensions. The callers that need the output width or those inputs take them from here
    instead of a forward pass of their own (each costs as much as the model's weights, e.g. an
    NTK-scaled layer's rescaling)."""
    total, largest = [0], [0]
    wide: set[str] = set()

    def hook(mod, args, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, Tensor):
                total[0] += t.numel()
                largest[0] = max(largest[0], t.numel())

    def watcher(name):
        def hook_in(mod, args, out):
            if args and isinstance(args[0], Tensor) and args[0].dim() > 2:
                wide.add(name)
        return hook_in

    handles = []
    try:  # registering can fail too (a scripted module): the hooks so far are removed
        for m in model.modules():
            if next(m.children(), None) is None:
                handles.append(m.register_forward_hook(hook))
        for k, m in (watch or {}).items():
            handles.append(m.register_forward_hook(watcher(k)))
        with torch.no_grad():
            out = model(x1)
    finally:
        for h in handles:
            h.remove()
    floor = max(out.numel(), x1.numel())
    return Probe(max(total[0], floor), max(largest[0], floor), out.numel(), out.dtype,
                 None if watch is None else frozenset(wide))


def _bytes(act: int, itemsize: int, p: int, c: int) -> int:
    return int(itemsize * (2 * c * p + 2 * (c + 1) * act))


def bytes_per_sample(model: nn.Module, X: Tensor, p: int, c: int, *,
                     probe: Probe | None = None) -> int:
    """Estimated bytes one sample costs inside ``vmap(jacrev)``: its ``c`` Jacobian rows (twice:
    the chunk and its rows of J) and ``c + 1`` copies of its activations (the forward pass
    and one backward pass per output), times a safety factor 2 for temporaries. ``probe``:
    :func:`activation_sizes` of ``X[:1]`` when the caller has it."""
    probe = probe or activation_sizes(model, X[:1])
    return _bytes(probe.total, probe.itemsize, p, c)


def auto_chunk(n: int, per_sample: int, memory_budget: float) -> int:
    """Samples per chunk: as many as fit in ``memory_budget`` bytes, at least 1, at most n."""
    return int(max(1, min(n, memory_budget // max(per_sample, 1))))


CHUNK_ACTIVATION_BYTES = 8 * 2**20
"""The largest activation (output of a leaf module) of one chunk of samples on the generic path."""


def chunk_for(model: nn.Module, X: Tensor, p: int, c: int, memory_budget: float, *,
              probe: Probe | None = None) -> int:
    """Samples per ``vmap(jacrev)`` chunk: within ``memory_budget`` and
    :data:`CHUNK_ACTIVATION_BYTES` (module docstring). ``probe``: :func:`activation_sizes` of
    ``X[:1]`` when the caller has it."""
    probe = probe or activation_sizes(model, X[:1])
    big, itemsize = probe.largest, probe.itemsize
    n = X.shape[0]
    step = auto_chunk(n, _bytes(probe.total, itemsize, p, c), memory_budget)
    if X.device.type == "cuda":  # no CPU cache to stay in: bigger launches win (H200: the cap
        return step              # made the CNN 1.8x slower than fixed chunks of 64)
    return min(step, auto_chunk(n, itemsize * big, CHUNK_ACTIVATION_BYTES))


@full_float32()
def per_sample_jacobian(model: nn.Module, X: Tensor, *, chunk_size: int | None = None,
                        names: Iterable[str] | None = None,
                        memory_budget: float = 2e9) -> Tensor:
    """The Jacobian ``J`` of shape ``(n·c, p)`` (sample-major rows) over the trainable
    parameters (or only those in ``names``; the others are held fixed and not differentiated),
    from ``vmap(jacrev)`` in chunks of ``chunk_size`` samples (``None``: from
    ``memory_budget``). Each chunk is copied straight into its rows of ``J`` (peak memory:
    ``J`` and one chunk, not twice ``J``; 7% faster than concatenating the chunks on the
    issue's CNN, 3×16×16, n = 1000, 2 threads)."""
    allp = dict(model.named_parameters())
    wanted = [k for k, v in allp.items() if v.requires_grad] if names is None else list(names)
    params = {k: allp[k].detach() for k in wanted}
    fixed = {k: v.detach() for k, v in allp.items() if k not in params}
    buffers = dict(model.named_buffers())

    def f_single(p, x):
        return functional_call(model, (p, fixed, buffers), (x.unsqueeze(0),)).reshape(-1)

    n = X.shape[0]
    if not params:  # nothing to differentiate: an empty Jacobian
        probe = activation_sizes(model, X[:1])
        return X.new_zeros(n * probe.outputs, 0, dtype=probe.dtype)
    if chunk_size is None:
        probe = activation_sizes(model, X[:1])
        p = sum(v.numel() for v in params.values())
        chunk_size = chunk_for(model, X, p, probe.outputs, memory_budget, probe=probe)
    jac_fn = vmap(jacrev(f_single), in_dims=(None, 0))
    J: Tensor | None = None  # written chunk by chunk: one copy, no concatenation of all of J
    for i in range(0, n, chunk_size):
        jac = list(jac_fn(params, X[i:i + chunk_size]).values())  # each (b, c, *shape)
        b, c = jac[0].shape[:2]
        if J is None:  # in the promoted dtype of all parameters, as a concatenation would be
            dtype = functools.reduce(torch.promote_types, [v.dtype for v in jac])
            J = jac[0].new_empty(n * c, sum(v[0, 0].numel() for v in jac), dtype=dtype)
        col = 0
        for v in jac:
            w = v[0, 0].numel()
            J[i * c:(i + b) * c, col:col + w].copy_(v.detach().reshape(b * c, w))
            col += w
    assert J is not None  # n >= 1: the callers refuse empty inputs
    return J


def generic_ntk(model: nn.Module, X: Tensor, kind: str, chunk_size: int | None,
                memory_budget: float, names: list[str] | None = None, *,
                probe: Probe | None = None) -> Tensor:
    """``J Jᵀ`` from per-sample Jacobians over the parameters ``names`` (default: all trainable).
    When ``J`` fits in ``memory_budget`` it is formed in chunks of :func:`chunk_for` samples,
    then one exactly symmetric :func:`gram`; otherwise Jacobian blocks are recomputed block row
    by block row and only the upper-triangle blocks are multiplied. ``probe``:
    :func:`activation_sizes` of ``X[:1]`` when the caller has it."""
    n = X.shape[0]
    allp = dict(model.named_parameters())
    if names is None:
        names = [k for k, v in allp.items() if v.requires_grad]
    p = sum(allp[k].numel() for k in names)
    probe = probe or activation_sizes(model, X[:1])
    c, dtype, itemsize = probe.outputs, probe.dtype, probe.itemsize
    chunk = chunk_size or chunk_for(model, X, p, c, memory_budget, probe=probe)
    if n * c * p * itemsize <= memory_budget:
        J = per_sample_jacobian(model, X, chunk_size=chunk, names=names)
        K = gram(J)
    else:  # recompute Jacobian blocks instead of storing J
        # blocks as large as fit (two blocks of J at once, plus one chunk's activations): each
        # block row recomputes the blocks right of it, so fewer, larger blocks recompute less;
        # each block is formed in chunks of ``chunk`` samples
        per = bytes_per_sample(model, X, p, c, probe=probe)
        step = chunk_size or auto_chunk(n, per + c * p * itemsize, memory_budget)
        K = torch.empty(n * c, n * c, dtype=dtype, device=X.device)
        starts = list(range(0, n, step))
        for a in starts:
            Ja = per_sample_jacobian(model, X[a:a + step], chunk_size=chunk, names=names)
            for b in starts:
                if b < a:
                    continue
                Jb = Ja if b == a else per_sample_jacobian(
                    model, X[b:b + step], chunk_size=chunk, names=names)
                blk = Ja @ Jb.T
                K[a * c:a * c + blk.shape[0], b * c:b * c + blk.shape[1]] = blk
                K[b * c:b * c + blk.shape[1], a * c:a * c + blk.shape[0]] = blk.T
        mirror_upper_(K)
    if kind == "trace" and c > 1:
        K = K.view(n, c, n, c).diagonal(dim1=1, dim2=3).sum(-1)
    return K
