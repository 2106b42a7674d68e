"""The rules path of the NTK engine: one forward pass with hooks on the ruled modules (each
call's inputs and outputs recorded), one backward pass per model output (the cotangents at every
recorded output), the rules' factors, their Gram products, and the generic per-sample path for
the parameters no rule covers (free parameters such as positional embeddings and class tokens,
modules without a rule, weights tied between modules), summed exactly; then mirrored once, so
the kernel is exactly symmetric.

Planning (:func:`plan`): every trainable parameter goes to the outermost module whose rule
covers it; a parameter that two modules claim (tied weights) goes to the generic path. After the
forward pass the autograd graph is checked as well: a covered parameter must be used only inside
the calls of its module (counted as edges to its gradient accumulator, from the module's outputs
back to its inputs); one also used elsewhere (``F.linear(h, self.emb.weight)``, a layer whose
``forward`` is bypassed) goes to the generic path.

Memory: the forward and backward passes run on chunks of samples sized from ``memory_budget``
(activations times ``c + 2``) and so that no activation (output of a leaf module) of a chunk
exceeds :data:`CHUNK_ACTIVATION_BYTES` (feature maps then stay in cache while the next layers
and the rules use them: on the issue's CNN with 3×32×32 inputs the forward and backward passes
ran 2x faster in chunks of 16-64 samples than of 158; an MLP's chunks stay whole; on a CUDA
device only the budget applies); the rules' factors are kept for all samples, in groups of
modules whose factors fit in half the budget when all of them would not (:func:`rules_ntk`).
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from catapults.curvature.ntk_rules.assemble import assemble, merge_calls, merge_chunks
from catapults.curvature.ntk_rules.attention import float_outputs
from catapults.curvature.ntk_rules.generic import (
    Probe,
    activation_sizes,
    auto_chunk,
    generic_ntk,
    per_sample_jacobian,
)
from catapults.curvature.ntk_rules.registry import (
    Call,
    Factor,
    GradFactor,
    NTKRule,
    RulesMismatch,
    rule_for,
)
from catapults.errors import KernelError
from catapults.linalg.gram import mirror_upper_

CHUNK_ACTIVATION_BYTES = 16 * 2**20
"""The largest activation (output of a leaf module) of one chunk of samples on the rules path."""


@dataclass
class Ruled:
    """A module treated by a rule: its name, the rule, and the local names of the parameters
    the rule computes (``want``) with their ids."""

    name: str
    module: nn.Module
    rule: NTKRule
    want: dict[str, int] = field(default_factory=dict)  # local name -> id(param)


@dataclass
class Plan:
    ruled: list[Ruled]
    remainder: list[str]  # names (model.named_parameters) for the generic path
    names: dict[int, str]  # id(param) -> name

    def covered_fraction(self, model: nn.Module, *, cheap_only: bool = False) -> float:
        """Share of the trainable parameters covered by rules (``cheap_only``: by rules that
        do not form per-sample gradients the generic path's way)."""
        p = {id(v): v.numel() for v in model.parameters() if v.requires_grad}
        covered = sum(p[i] for r in self.ruled for i in r.want.values()
                      if not (cheap_only and r.rule.per_sample))
        return covered / max(1, sum(p.values()))


def plan(model: nn.Module) -> Plan:
    """Assign each trainable parameter to a rule or to the generic path (see module doc)."""
    names = {}
    for k, v in model.named_parameters():
        names.setdefault(id(v), k)
    trainable = {id(v) for v in model.parameters() if v.requires_grad}
    claims: Counter[int] = Counter()
    ruled: list[Ruled] = []
    inside: list[str] = []  # modules whose rule covers their children too
    for mname, mod in model.named_modules():
        if any(mname.startswith(p + ".") for p in inside):
            continue
        rule = rule_for(mod)
        if rule is None:
            continue
        rule.check(mod, mname or type(mod).__name__)
        own = {k: id(v) for k, v in rule.params(mod).items() if id(v) in trainable}
        if any("." in k for k in rule.params(mod)):
            inside.append(mname)
        claims.update(own.values())
        if own:
            ruled.append(Ruled(mname, mod, rule, own))
    tied = {i for i, k in claims.items() if k > 1}
    for r in ruled:
        r.want = {k: i for k, i in r.want.items() if i not in tied}
    ruled = [r for r in ruled if r.want]
    covered = {i for r in ruled for i in r.want.values()}
    remainder = [names[i] for i in names if i in trainable and i not in covered]
    return Plan(ruled, remainder, names)


def _uses(roots, stop: set) -> Counter[int]:
    """Edges into each parameter's gradient accumulator reachable from ``roots``, not going
    past the nodes in ``stop``."""
    counts: Counter[int] = Counter()
    seen: set = set()
    stack = [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if node in seen or node in stop:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None:
                counts[id(var)] += 1
            else:
                stack.append(nxt)
    return counts


def _detach(x):
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, x)


def _record(model: nn.Module, X: Tensor, ruled: list[Ruled]):
    """Forward pass with hooks: ``(f (b, c), {name: [Call]}, {name: [stop nodes per call]})``."""
    calls: dict[str, list[Call]] = {r.name: [] for r in ruled}
    stops: dict[str, list[set]] = {r.name: [] for r in ruled}

    def make_hook(name):
        def hook(mod, args, kwargs, out):
            ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
            stops[name].append({t.grad_fn for t in ins if t.grad_fn is not None})
            calls[name].append(Call(_detach(args), _detach(kwargs), float_outputs(out)))
        return hook

    handles = [r.module.register_forward_hook(make_hook(r.name), with_kwargs=True)
               for r in ruled]
    try:
        with torch.enable_grad():
            f = model(X)
    finally:
        for h in handles:
            h.remove()
    return f.reshape(X.shape[0], -1), calls, stops


def _untied(f: Tensor, ruled: list[Ruled], calls, stops) -> list[Ruled]:
    """Drop from each module's ``want`` the parameters also used outside its calls."""
    total = _uses([f.grad_fn], set())
    inside: dict[str, Counter[int]] = {}
    for r in ruled:
        cnt: Counter[int] = Counter()
        for call, stop in zip(calls[r.name], stops[r.name]):
            cnt.update(_uses([o.grad_fn for o in call.outputs], stop))
        inside[r.name] = cnt
    for r in ruled:
        r.want = {k: i for k, i in r.want.items() if total[i] == inside[r.name][i]}
    return [r for r in ruled if r.want]


def _cotangents(f: Tensor, calls: dict[str, list[Call]]) -> None:
    """Fill each call's cotangents ``(c, *out.shape)`` from one backward pass per output."""
    targets = [(call, k) for cs in calls.values() for call in cs
               for k in range(len(call.outputs))]
    live = [(call, k) for call, k in targets if call.outputs[k].requires_grad] \
        if f.requires_grad else []  # an output cut from the graph: all cotangents are zero
    c = f.shape[1]
    got: list[list[Tensor]] = [[] for _ in live]
    for j in range(c if live else 0):  # nothing to differentiate when no rule applies
        gs = torch.autograd.grad(f[:, j].sum(), [call.outputs[k] for call, k in live],
                                 retain_graph=j < c - 1, allow_unused=True)
        for slot, g, (call, k) in zip(got, gs, live):
            slot.append(torch.zeros_like(call.outputs[k]) if g is None else g.detach())
    filled = {(id(call), k): slot for slot, (call, k) in zip(got, live)}
    for cs in calls.values():
        for call in cs:
            call.cotangents = [
                _stack(filled[id(call), k]) if (id(call), k) in filled
                else torch.zeros(c, *o.shape, dtype=o.dtype, device=o.device)
                for k, o in enumerate(call.outputs)]
            call.outputs = [o.detach() for o in call.outputs]


def _stack(slot: list[Tensor]) -> Tensor:
    """``(c, *shape)`` from the ``c`` gradients (a view for ``c = 1``)."""
    return slot[0].unsqueeze(0) if len(slot) == 1 else torch.stack(slot)


def rules_ntk(model: nn.Module, X: Tensor, kind: str, *, memory_budget: float = 2e9,
              chunk_size: int | None = None, the_plan: Plan | None = None,
              probe: Probe | None = None) -> tuple[Tensor, Tensor]:
    """``(K, f(X))`` by the rules path (see module doc), the generic path for the rest.

    When the factors of all samples would pass half of ``memory_budget`` (a ResNet's per-sample
    convolution gradients are ``J``'s size), the ruled modules are taken in groups whose factors
    fit (:func:`factor_groups`), one forward pass and ``c`` backward passes per group, each
    group's contribution added to ``K`` and its factors freed. ``probe``:
    :func:`~.generic.activation_sizes` of ``X[:1]`` when the caller has it."""
    pl = the_plan or plan(model)
    probe = probe or activation_sizes(model, X[:1])
    n = X.shape[0]
    remainder = list(pl.remainder)
    K = f = None
    for group in factor_groups(model, X, pl, memory_budget / 2):
        got = rules_factors(model, X, memory_budget=memory_budget, chunk_size=chunk_size,
                            the_plan=Plan(group, [], pl.names), probe=probe)
        assert got is not None  # no factor limit was set
        factors, gpl, f = got
        remainder += gpl.remainder  # parameters the graph check found used outside
        Kg = assemble(factors, n, f.shape[1], kind, f.dtype, X.device, memory_budget)
        del factors
        K = Kg if K is None else K.add_(Kg)
    assert K is not None and f is not None
    if remainder:
        K.add_(remainder_ntk(model, X, kind, Plan([], remainder, pl.names), chunk_size,
                             memory_budget, probe=probe))
    return mirror_upper_(K), f


def plan_key(model: nn.Module, X: Tensor, pl: Plan) -> tuple:
    """What results cached per model (the rules check, factor sizes) depend on besides the
    parameters' values: the input's per-sample shape and dtype, and each ruled module, its
    type and its parameters' shapes and dtypes (a module swapped into the same model object,
    or a cast, is a new key)."""
    params = dict(model.named_parameters())
    return (tuple(X.shape[1:]), X.dtype,
            tuple((r.name, id(r.module), type(r.module),
                   tuple((k, tuple(params[pl.names[i]].shape), params[pl.names[i]].dtype)
                         for k, i in sorted(r.want.items())))
                  for r in pl.ruled))


_FACTOR_SIZES: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _per_sample_factor_bytes(model: nn.Module, X: Tensor, pl: Plan) -> list[float]:
    """Each ruled module's factor bytes per sample for ``n = len(X)`` samples, from a pass over
    ``X[:2]``; cached per model, ``n``, input shape and dtype, and the ruled modules with their
    parameters' shapes and dtypes (the sizes do not depend on the parameters' values: on a
    width-1024 MLP the pass cost 15% of a 32-sample kernel, which the monitors compute at
    every step)."""
    n = X.shape[0]
    key = (n, *plan_key(model, X, pl))  # a rule may pick its factors' form by n (conv does)
    cache = _FACTOR_SIZES.setdefault(model, {})
    if key not in cache:
        ruled = [Ruled(r.name, r.module, r.rule, dict(r.want)) for r in pl.ruled]
        f, calls, _ = _record(model, X[:2], ruled)
        _cotangents(f, calls)
        cache[key] = [factor_bytes(_module_factors(r, calls[r.name], n, f.shape[1], 2)) / 2
                      for r in ruled]
    return cache[key]


def factor_groups(model: nn.Module, X: Tensor, pl: Plan, limit: float) -> list[list[Ruled]]:
    """``pl.ruled`` in order, cut into groups whose factors for all samples stay within
    ``limit`` bytes (one group, ``[pl.ruled]``, when they all fit; a module over the limit on
    its own is a group by itself). Each module's factor bytes are measured on a forward and
    backward pass over the first two samples (once per model and input shape), scaled to
    ``n``."""
    n = X.shape[0]
    if not pl.ruled or n < 2:
        return [pl.ruled]
    size = [b * n for b in _per_sample_factor_bytes(model, X, pl)]
    if sum(size) <= limit:
        return [pl.ruled]
    groups: list[list[Ruled]] = [[]]
    used = 0.0
    for r, b in zip(pl.ruled, size):
        if groups[-1] and used + b > limit:
            groups.append([])
            used = 0.0
        groups[-1].append(r)
        used += b
    return groups


def rules_factors(model: nn.Module, X: Tensor, *, memory_budget: float = 2e9,
                  chunk_size: int | None = None, the_plan: Plan | None = None,
                  max_factor_bytes: float | None = None, probe: Probe | None = None
                  ) -> tuple[list[Factor], Plan, Tensor] | None:
    """The rules' factors for all samples, the final plan (parameters whose use the graph check
    found outside their module moved to ``remainder``) and the outputs ``f(X)`` ``(n, c)``.

    With ``max_factor_bytes``, returns None (having formed the factors of one chunk only) when
    the factors of all samples, extrapolated from the first chunk, would exceed it."""
    pl = the_plan or plan(model)
    n = X.shape[0]
    probe = probe or activation_sizes(model, X[:1])
    c = probe.outputs
    act, big = probe.itemsize * probe.total, probe.itemsize * probe.largest
    step = chunk_size or auto_chunk(n, 2 * (c + 2) * act, memory_budget / 2)
    if chunk_size is None and X.device.type != "cuda":  # in cache on a CPU (module docstring)
        step = min(step, auto_chunk(n, big, CHUNK_ACTIVATION_BYTES))
    ruled = [Ruled(r.name, r.module, r.rule, dict(r.want)) for r in pl.ruled]  # caller's kept
    per_chunk: list[list[Factor]] = []
    outs = []
    first = True
    for a in range(0, n, step):
        f, calls, stops = _record(model, X[a:a + step], ruled)
        if first:
            before = [(r, dict(r.want)) for r in ruled]
            ruled = _untied(f, ruled, calls, stops)
            dropped = [pl.names[i] for r, w in before for k, i in w.items() if k not in r.want]
            pl = Plan(ruled, pl.remainder + dropped, pl.names)
        _cotangents(f, calls)
        outs.append(f.detach())
        fs: list[Factor] = []
        for r in ruled:
            fs.extend(_module_factors(r, calls[r.name], n, c, f.shape[0]))
        if first and max_factor_bytes is not None and \
                factor_bytes(fs) * n / f.shape[0] > max_factor_bytes:
            return None
        first = False
        per_chunk.append(fs)
        del calls, stops, f
    if len({len(fs) for fs in per_chunk}) > 1:
        raise RulesMismatch("the layer rules gave a different number of factors for different "
                            "chunks of samples (control flow that depends on the batch)")
    factors = merge_chunks(per_chunk) if per_chunk else []
    return factors, pl, torch.cat(outs)


def _module_factors(r: Ruled, cs: list[Call], n: int, c: int, b: int) -> list[Factor]:
    """The factors of one ruled module over its calls on a chunk of ``b`` samples, checked:
    every factor has one row per sample and output (``b·c``) and its inputs one per sample,
    else the module's inputs were not batched along their first dimension (a sequence-first
    layer, a layer on a table shared by all samples, tokens folded into the batch)."""
    name = f"{r.name!r} ({type(r.module).__name__})"
    for call in cs:
        call.shared = len(cs) > 1
    try:
        fs = merge_calls([r.rule.factors(r.module, call, set(r.want), n, c) for call in cs],
                         r.name)
    except RulesMismatch:
        raise
    except KernelError as e:  # a rule refusing a call (e.g. an unbatched convolution)
        raise RulesMismatch(f"module {name}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a rule meeting a call it was not written for
        raise RulesMismatch(f"the NTK rule of module {name} failed on its call "
                            f"({type(e).__name__}: {e})") from e
    for fa in fs:
        rows = fa.G.shape[0] if isinstance(fa, GradFactor) else fa.H.shape[0]
        ins = None if isinstance(fa, GradFactor) or fa.F is None else fa.F.shape[0]
        if rows != b * c or ins not in (None, b):
            raise RulesMismatch(
                f"module {name} was called on tensors whose first dimension is not the "
                f"batch of {b} samples (its NTK rule made {rows} rows for {b}·{c}); its "
                "parameters need the generic path (method='jacobian')")
    return fs


def factor_bytes(factors: list[Factor]) -> int:
    """Bytes of the tensors of ``factors`` (their own elements: a factor that is a view of the
    inputs, which the caller holds anyway, is not charged for the rest of them)."""
    total = 0
    for fa in factors:
        for t in ((fa.G,) if isinstance(fa, GradFactor) else (fa.H, fa.F)):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def remainder_ntk(model: nn.Module, X: Tensor, kind: str, pl: Plan, chunk_size: int | None,
                  memory_budget: float, *, probe: Probe | None = None) -> Tensor:
    """The generic path on the parameters no rule covers (the others held fixed); a failure
    there is a KernelError naming their modules."""
    try:
        return generic_ntk(model, X, kind, chunk_size, memory_budget, names=pl.remainder,
                           probe=probe)
    except KernelError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of vmap(jacrev) on a foreign module
        raise remainder_failure(model, pl, e) from e


def remainder_jacobian(model: nn.Module, X: Tensor, pl: Plan, memory_budget: float) -> Tensor:
    """Per-sample Jacobian ``(n·c, p_rest)`` of the parameters no rule covers (errors as in
    :func:`remainder_ntk`)."""
    try:
        return per_sample_jacobian(model, X, names=pl.remainder, memory_budget=memory_budget)
    except KernelError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of vmap(jacrev) on a foreign module
        raise remainder_failure(model, pl, e) from e


def remainder_failure(model: nn.Module, pl: Plan, e: Exception) -> KernelError:
    """The KernelError for a generic path that failed on the parameters of ``pl.remainder``."""
    owners = sorted({k.rsplit(".", 1)[0] if "." in k else "(top level)" for k in pl.remainder})
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    desc = ", ".join(f"{o!r} ({types.get(o, type(model).__name__)})" for o in owners)
    return KernelError(
        f"no NTK rule covers the parameters of module(s) {desc}, and the generic "
        f"vmap(jacrev) path failed on them ({type(e).__name__}: {e}); register a rule "
        "with catapults.ntk.register_ntk_rule")
