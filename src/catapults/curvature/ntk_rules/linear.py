"""Dense layers: ``y = sw · x Wᵀ + sb · b`` on inputs ``(b, ..., in)``; every leading position
(tokens of a sequence) is one position ``t`` of a :class:`HadamardFactor`. ``nn.Linear`` has
``sw = sb = 1``; an NTK-scaled layer registers its scales with :func:`register_linear_rule`."""

from __future__ import annotations

from collections.abc import Callable

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

LinearScales = Callable[[nn.Module], tuple[float, float]]


class LinearRule(NTKRule):
    """``weight`` ``(out, in)`` and ``bias`` ``(out,)`` (or None), scaled by ``scales(module)``
    = ``(sw, sb)``."""

    def __init__(self, scales: LinearScales | None = None) -> None:
        self.scales = scales

    def params(self, module: nn.Module) -> dict[str, nn.Parameter]:
        return named_params(module, ("weight", "bias"))

    def factors(self, module: nn.Module, call: Call, want: set[str], n: int,
                c: int) -> list[Factor]:
        sw, sb = self.scales(module) if self.scales is not None else (1.0, 1.0)
        x = call.input
        F = x.reshape(x.shape[0], -1, x.shape[-1]) if "weight" in want else None
        g = sample_rows(call.cot)
        H = g.reshape(g.shape[0], -1, g.shape[-1])
        return [HadamardFactor(H, F, float(sw), float(sb) if "bias" in want else 0.0)]


LINEAR_RULES: dict[type[nn.Module], LinearScales] = {nn.Linear: lambda mod: (1.0, 1.0)}
"""Module types treated as dense layers, each mapped to ``(weight_scale, bias_scale)``
(kept for compatibility; the registry of all rules is
:data:`catapults.curvature.ntk_rules.registry.NTK_RULES`)."""


def register_linear_rule(cls: type[nn.Module], scales: LinearScales) -> None:
    """Let the rules path handle layers of type ``cls`` (and its subclasses) as dense layers:
    ``scales(module)`` returns ``(weight_scale, bias_scale)`` of
    ``y = weight_scale · x Wᵀ + bias_scale · b`` (``W`` in ``.weight``, ``b`` in ``.bias`` or
    None). :class:`catapults.models.ScaledLinear` registers itself this way."""
    LINEAR_RULES[cls] = scales
    register_ntk_rule(cls, LinearRule(scales))


register_ntk_rule(nn.Linear, LinearRule())
