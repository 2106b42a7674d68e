"""Modules whose per-sample gradients come from their own vector-Jacobian product, vmapped over
the samples (and over the ``c`` model outputs): exact for any module that treats samples
independently, and local: only the module itself is differentiated, with the cotangents the
engine's backward passes delivered at its outputs. ``nn.MultiheadAttention`` uses it (all of its
parameters, ``out_proj`` included, which its forward uses without calling it). Attention written
from ``nn.Linear`` layers needs nothing: each projection is a dense layer over token positions.

Users can register it for their own modules: ``register_ntk_rule(MyBlock, LocalVJPRule())``
(batch along dim 0 of every input and output that has ``b`` rows; override
:meth:`LocalVJPRule.batch_dims` otherwise)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten

from catapults.curvature.ntk_rules.registry import (
    Call,
    Factor,
    GradFactor,
    NTKRule,
    register_ntk_rule,
)


def float_outputs(out: Any) -> list[Tensor]:
    """The floating-point tensors of a module's output, flattened (the engine's order)."""
    return [t for t in tree_flatten(out)[0] if isinstance(t, Tensor) and t.is_floating_point()]


class LocalVJPRule(NTKRule):
    """Per-sample gradients of all the module's parameters (recursively) by ``vmap(vjp)``."""

    per_sample = True

    def params(self, module):
        return dict(module.named_parameters())

    def batch_dims(self, module: nn.Module, call: Call, b: int
                   ) -> tuple[list[int | None], dict[str, int | None], list[int]]:
        """Batch dimension of each positional input, keyword input and tensor output (None:
        shared by all samples)."""
        def dim(x):
            return 0 if isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == b else None
        return ([dim(a) for a in call.args], {k: dim(v) for k, v in call.kwargs.items()},
                [0] * len(call.outputs))

    def factors(self, module, call: Call, want, n, c) -> list[Factor]:
        b = self._batch_size(module, call)
        arg_dims, kw_dims, out_dims = self.batch_dims(module, call, b)
        allp = dict(module.named_parameters())
        params = {k: allp[k].detach() for k in allp if k in want}
        fixed = {k: v.detach() for k, v in allp.items() if k not in want}
        buffers = dict(module.named_buffers())
        names = list(call.kwargs)
        tensors, dims, where = [], [], []
        for i, (a, d) in enumerate(zip(call.args, arg_dims)):
            if isinstance(a, Tensor):
                tensors.append(a)
                dims.append(d)
                where.append(i)
        for k in names:
            v = call.kwargs[k]
            if isinstance(v, Tensor):
                tensors.append(v)
                dims.append(kw_dims[k])
                where.append(k)

        def one(ts, cots):
            args, kwargs = list(call.args), dict(call.kwargs)
            for t, d, w in zip(ts, dims, where):
                t1 = self.sample_input(module, w, t if d is None else t.unsqueeze(d))
                if isinstance(w, int):
                    args[w] = t1
                else:
                    kwargs[w] = t1

            def fwd(p):
                out = functional_call(module, (p, fixed, buffers), tuple(args), kwargs)
                return tuple(float_outputs(out))

            _, pull = vjp(fwd, params)

            def back(*ct):
                return pull(tuple(t.unsqueeze(d) for t, d in zip(ct, out_dims)))[0]

            return vmap(back)(*cots)

        grads = vmap(one, in_dims=(dims, [d + 1 for d in out_dims]), out_dims=1)(
            tensors, list(call.cotangents))  # name -> (c, b, *shape)
        G = torch.cat([g.transpose(0, 1).reshape(b * c, -1) for g in grads.values()], 1)
        return [GradFactor(G)]

    def sample_input(self, module: nn.Module, where: int | str, t: Tensor) -> Tensor:
        """One sample's input ``where`` (positional index or keyword) as the module takes it,
        from the batched input with its batch dimension of size 1 (identity by default)."""
        return t

    def _batch_size(self, module: nn.Module, call: Call) -> int:
        return call.input.shape[0]


MASK_POSITION = 5  # attn_mask in nn.MultiheadAttention.forward's positional arguments


class MultiheadAttentionRule(LocalVJPRule):
    """``nn.MultiheadAttention``: per-sample gradients by its own VJP, batch along ``batch_first``;
    ``key_padding_mask`` is per sample, a 2-D ``attn_mask`` shared, and a 3-D ``attn_mask``
    ``(b·heads, L, S)`` (batch-major, as the module reads it) is split into its samples' head
    blocks ``(heads, L, S)``."""

    def factors(self, module, call: Call, want, n, c) -> list[Factor]:
        b = self._batch_size(module, call)
        args, kwargs = list(call.args), dict(call.kwargs)
        for key, where in (("attn_mask", kwargs), (MASK_POSITION, args)):
            mask = where.get(key) if isinstance(where, dict) else (
                where[key] if len(where) > key else None)
            if isinstance(mask, Tensor) and mask.dim() == 3:  # the module checked its height
                where[key] = mask.reshape(b, module.num_heads, *mask.shape[1:])
        return super().factors(module, replace(call, args=tuple(args), kwargs=kwargs), want,
                               n, c)

    def sample_input(self, module, where, t):
        if where in ("attn_mask", MASK_POSITION) and t.dim() == 4:  # (1, heads, L, S)
            return t.reshape(-1, *t.shape[2:])
        return t

    def batch_dims(self, module, call, b):
        bf = 0 if module.batch_first or call.input.dim() == 2 else 1

        def mask_dim(a: Any) -> int | None:  # per sample when split by factors (4-D)
            return 0 if isinstance(a, Tensor) and a.dim() == 4 else None
        arg_dims: list[int | None] = []
        for i, a in enumerate(call.args):
            arg_dims.append(bf if i < 3 else (0 if i == 3 and isinstance(a, Tensor)
                                               else mask_dim(a) if i == MASK_POSITION
                                               else None))
        kw_dims = {k: (0 if k == "key_padding_mask" else mask_dim(v) if k == "attn_mask"
                       else None) for k, v in call.kwargs.items()}
        return arg_dims, kw_dims, [bf, 0][:len(call.outputs)]

    def _batch_size(self, module, call):
        x = call.input
        return x.shape[0] if module.batch_first or x.dim() == 2 else x.shape[1]


register_ntk_rule(nn.MultiheadAttention, MultiheadAttentionRule())
