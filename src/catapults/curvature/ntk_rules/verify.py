"""A numerical check that the layer rules describe a model, before they are trusted with it.

The rules read each ruled module's calls as batched along their first dimension and the module
as computing what its type's rule says. Shapes catch most violations
(:func:`~catapults.curvature.ntk_rules.engine.rules_factors` refuses factors with the wrong
number of rows), but not all: a sequence-first layer on ``(T, b, d)`` inputs with ``T = b``, or
a layer applied to a table of ``b`` rows shared by all samples, has factors of the right shapes
and a wrong kernel. So before the rules path runs on a model, the rules' kernel on the first
:data:`SAMPLES` samples is compared with autograd in one bilinear form:
``uᵀ K_rules v`` against ``(Jᵀu)·(Jᵀv)`` for two random vectors, with ``J`` the Jacobian over
the parameters the rules cover (two VJPs; no forward-mode AD needed). A mismatch raises
:class:`~catapults.curvature.ntk_rules.registry.RulesMismatch`. A model passes once per input
shape, dtype and set of ruled modules with their parameters' shapes
(:func:`~catapults.curvature.ntk_rules.engine.plan_key`; remembered in a weak dictionary on the
model), so the check costs one small forward and backward pass per model and shape, not per
call.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp

from catapults.curvature.ntk_rules.engine import Plan, plan_key, rules_factors
from catapults.curvature.ntk_rules.products import factor_products
from catapults.curvature.ntk_rules.registry import GradFactor, RulesMismatch

SAMPLES = 5
"""Samples the check runs on (fewer when X has fewer)."""

_PASSED: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()


def _tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the bilinear form: rounding of float32 products stays far below
    1e-3 (the mismatches this catches are 10-60%); half precisions get 20 eps."""
    return 1e-9 if dtype == torch.float64 else max(1e-3, 20 * torch.finfo(dtype).eps)


def verify_rules(model: nn.Module, X: Tensor, pl: Plan) -> None:
    """Raise :class:`RulesMismatch` when the rules' kernel on ``X[:SAMPLES]`` disagrees with
    autograd's over the parameters they cover (module docstring)."""
    key = plan_key(model, X, pl)
    passed = _PASSED.setdefault(model, set())
    if key in passed or not pl.ruled:
        return
    Xs = X[:SAMPLES]
    m = Xs.shape[0]
    factors, pl2, f = rules_factors(model, Xs, chunk_size=m, the_plan=pl)
    covered = [pl2.names[i] for r in pl2.ruled for i in r.want.values()]
    if not covered:
        passed.add(key)
        return
    gen = torch.Generator(device="cpu").manual_seed(12345)
    N = f.numel()
    u = torch.randn(N, generator=gen, dtype=torch.float64).to(f.dtype).to(f.device)
    v = torch.randn(N, generator=gen, dtype=torch.float64).to(f.dtype).to(f.device)
    dt = factors[0].G.dtype if isinstance(factors[0], GradFactor) else factors[0].H.dtype
    rules = float(u.to(dt) @ factor_products(factors, m, f.shape[1])(v.to(dt)))
    allp = dict(model.named_parameters())
    params = {k: allp[k].detach() for k in covered}
    fixed = {k: p.detach() for k, p in allp.items() if k not in params}
    buffers = dict(model.named_buffers())
    try:
        _, pull = vjp(lambda p: functional_call(model, (p, fixed, buffers), (Xs,)).reshape(-1),
                      params)
        gu, gv = pull(u)[0], pull(v)[0]
    except Exception:  # noqa: BLE001 - no reference to check against: trust the rules
        passed.add(key)
        return
    ref = sum(float((gu[k].double() * gv[k].double()).sum()) for k in gu)
    scale = (sum(float(gu[k].double().square().sum()) for k in gu)
             * sum(float(gv[k].double().square().sum()) for k in gv)) ** 0.5
    if abs(rules - ref) > _tolerance(dt) * (scale + abs(rules)):
        raise RulesMismatch(
            f"the NTK layer rules do not reproduce autograd on this model (uᵀKv = {rules:.6g} "
            f"against {ref:.6g} on {m} samples): a ruled module is probably applied to tensors "
            "not batched along their first dimension (sequence-first layers, a table shared by "
            "all samples, tokens folded into the batch) or computes something other than its "
            "type's rule; use method='jacobian'")
    passed.add(key)
