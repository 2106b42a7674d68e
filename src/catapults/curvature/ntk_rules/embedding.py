"""``nn.Embedding`` on integer inputs ``(b, *)``: the per-sample gradient of the table is the
output gradients scattered into the rows of the sample's indices, so its Gram is
``Σ_{s,t} [idx_is = idx_jt] (g_is·g_jt)``: a :class:`HadamardFactor` whose input side is the
indices (one-hot rows, never formed unless the engine finds per-sample gradients cheaper).
Positions at ``padding_idx`` get no gradient. ``max_norm`` (which rewrites the table during the
forward pass) and ``scale_grad_by_freq`` are left to the generic path."""

from __future__ import annotations

from torch import nn

from catapults.curvature.ntk_rules.registry import (
    Call,
    Factor,
    HadamardFactor,
    NTKRule,
    named_params,
    register_ntk_rule,
    sample_rows,
)


class EmbeddingRule(NTKRule):
    def params(self, module):
        return named_params(module, ("weight",))

    def supports(self, module):
        return module.max_norm is None and not module.scale_grad_by_freq

    def factors(self, module, call: Call, want: set[str], n: int, c: int) -> list[Factor]:
        idx = call.input
        b = idx.shape[0]
        idx = idx.reshape(b, -1)
        g = sample_rows(call.cot)
        H = g.reshape(g.shape[0], -1, g.shape[-1])
        if module.padding_idx is not None:
            keep = (idx != module.padding_idx).repeat_interleave(c, 0)
            H = H * keep.unsqueeze(-1).to(H.dtype)
        return [HadamardFactor(H, idx, 1.0, 0.0)]


register_ntk_rule(nn.Embedding, EmbeddingRule())
