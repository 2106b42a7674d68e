"""The layer-rule registry of the NTK engine (after BackPACK's extension registry): a dict from
module type to a small per-layer rule that turns what one forward pass and one backward pass per
output saw at that module into its exact contribution to ``K = J Jᵀ``.

What a rule sees. For each call of its module in the forward pass (a module used twice is called
twice), a :class:`Call` with the module's inputs (detached) and the cotangents: for every tensor
output ``z`` of the call, the gradients of ``Σ_i f_j(x_i)`` with respect to ``z`` for each model
output ``j``, stacked as ``(c, *z.shape)``. Since sample ``i``'s outputs depend only on sample
``i``, the slice for sample ``i`` is that sample's own output gradient.

What a rule returns: a list of factors for the parameters it was asked for (``want``), one list
per call, with the same structure for every call:

- :class:`GradFactor` ``G`` (``(b·c, m)``, sample-major rows): per-sample gradients; its
  contribution is ``G Gᵀ``. Calls of a shared module are summed before the Gram product.
- :class:`HadamardFactor` ``(H, F, sw, sb)``, for layers linear in their weight over
  positions ``t`` (a dense layer on ``(b, T, in)`` inputs, a convolution's patches, an
  embedding's indices): per-sample weight gradient ``sw Σ_t H_t F_tᵀ`` and bias gradient
  ``sb Σ_t H_t``; contribution ``Σ_{s,t} (H_s·H'_t)(sw² F_s·F'_t + sb²)``. The engine picks the
  cheaper of the Hadamard form and the per-sample gradients (see
  :mod:`catapults.curvature.ntk_rules.assemble`); calls of a shared module concatenate positions.

Users register their own: ``register_ntk_rule(MyModule, rule)`` with ``rule`` an
:class:`NTKRule` or a function ``(module, call, want, n, c) -> list of factors``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from catapults.errors import KernelError


class RulesMismatch(KernelError):
    """The layer rules do not describe this model (a ruled module's inputs not batched along
    their first dimension, a rule that failed on a call, factors that disagree with autograd):
    ``method="auto"`` then takes the generic path; an explicit ``method="rules"`` raises it."""


@dataclass
class Call:
    """One call of a module in the forward pass: its inputs (detached tensors), its tensor
    outputs and their cotangents ``(c, *out.shape)``, in the order of the flattened outputs."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[Tensor] = field(default_factory=list)
    cotangents: list[Tensor] = field(default_factory=list)
    shared: bool = False  # the module runs more than once in the forward pass

    @property
    def input(self) -> Tensor:
        """The first positional input (or, for a module called with keywords only, the
        keyword ``input``, else the first tensor keyword)."""
        if self.args:
            return self.args[0]
        if isinstance(self.kwargs.get("input"), Tensor):
            return self.kwargs["input"]
        for v in self.kwargs.values():
            if isinstance(v, Tensor):
                return v
        raise KernelError("the module was called without a tensor input")

    @property
    def cot(self) -> Tensor:
        """The cotangent of the first output, ``(c, *out.shape)``."""
        return self.cotangents[0]


@dataclass
class GradFactor:
    """Per-sample gradients ``G`` (``(b·c, m)``, row ``i*c + j``): contributes ``G Gᵀ``."""

    G: Tensor


@dataclass
class HadamardFactor:
    """A layer linear in its weight over positions: ``H`` (``(b·c, T, dg)``, output side),
    ``F`` (``(b, T, da)`` inputs, or integer indices ``(b, T)`` meaning one-hot rows; None when
    the weight is not wanted), scales ``sw`` (weight) and ``sb`` (bias; 0 when no bias)."""

    H: Tensor
    F: Tensor | None
    sw: float = 1.0
    sb: float = 0.0


Factor = GradFactor | HadamardFactor


class NTKRule:
    """A layer rule. Subclasses implement :meth:`factors`; :meth:`params` says which parameters
    the rule covers (default: the module's own, ``recurse=False``); :meth:`check` refuses a
    module the rule cannot treat exactly (raise :class:`KernelError`), and :meth:`supports`
    returns False to leave such a module to the generic path instead. ``per_sample`` is True
    for rules that form per-sample gradients by work comparable to the generic path's
    (convolutions on images, local VJPs): ``method="auto"`` does not count them as a saving on
    a CPU. ``fast_on_cuda`` marks per-sample rules that measured faster than the generic path
    on a GPU (the convolution rule: 1.9-4.3x on an H200, docs/benchmarks.md); ``auto`` counts
    them there, and on a CPU when the Jacobian does not fit in the memory budget."""

    per_sample = False
    fast_on_cuda = False

    def params(self, module: nn.Module) -> dict[str, nn.Parameter]:
        return dict(module.named_parameters(recurse=False))

    def supports(self, module: nn.Module) -> bool:
        return True

    def check(self, module: nn.Module, name: str) -> None:
        return None

    def factors(self, module: nn.Module, call: Call, want: set[str], n: int,
                c: int) -> list[Factor]:
        raise NotImplementedError


class FunctionRule(NTKRule):
    """A rule from a plain function ``(module, call, want, n, c) -> list of factors``."""

    def __init__(self, fn: Callable[..., list[Factor]]) -> None:
        self.fn = fn

    def factors(self, module, call, want, n, c):
        return self.fn(module, call, want, n, c)


NTK_RULES: dict[type[nn.Module], NTKRule] = {}
"""Module type -> rule; looked up along the type's MRO (a subclass inherits its base's rule
unless it has its own)."""


def register_ntk_rule(cls: type[nn.Module], rule: NTKRule | Callable[..., list[Factor]]) -> None:
    """Let the NTK engine treat modules of type ``cls`` (and subclasses) with ``rule``."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise KernelError(f"register_ntk_rule needs an nn.Module subclass, got {cls!r}")
    NTK_RULES[cls] = rule if isinstance(rule, NTKRule) else FunctionRule(rule)


def unregister_ntk_rule(cls: type[nn.Module]) -> None:
    """Remove the rule registered for exactly ``cls`` (no error when there is none)."""
    NTK_RULES.pop(cls, None)


def rule_for(module: nn.Module) -> NTKRule | None:
    """The rule of ``module``'s type (nearest in its MRO), or None. None as well, so that the
    generic path treats the module exactly, when the rule cannot know what the module computes:
    a subclass that overrides ``forward`` does not inherit its base's rule, and a module with
    forward hooks or forward pre-hooks (old-style ``spectral_norm`` / ``weight_norm``, hooks
    that rewrite inputs or outputs) gets none."""
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    for cls in type(module).__mro__:
        rule = NTK_RULES.get(cls)
        if rule is not None:
            if cls is not type(module) and getattr(type(module), "forward", None) is not \
                    getattr(cls, "forward", None):
                return None
            return rule if rule.supports(module) else None
    return None


def named_params(module: nn.Module, names: tuple[str, ...]) -> dict[str, nn.Parameter]:
    """The module's own parameters with these names (a layer rule knows only those; others,
    such as ``weight_orig`` or ``weight_g``, go to the generic path)."""
    return {k: v for k, v in module.named_parameters(recurse=False) if k in names}


def sample_rows(cot: Tensor, batch_dim: int = 0) -> Tensor:
    """Cotangent ``(c, *shape)`` with the batch at ``batch_dim`` of ``shape`` -> ``(b·c, *rest)``
    with sample-major rows (``i*c + j``)."""
    t = cot.movedim(batch_dim + 1, 0)  # (b, c, *rest)
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])
