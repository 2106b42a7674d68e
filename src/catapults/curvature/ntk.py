"""The empirical neural tangent kernel ``K = J Jᵀ``, computed exactly (docs/conventions.md).

Conventions. ``J ∈ R^{(n·c) × p}`` is the Jacobian of the outputs ``f(X) ∈ R^{n×c}`` (flattened
sample-major: row ``i*c + j`` is output ``j`` of sample ``i``) with respect to the trainable
parameters; ``K = J Jᵀ`` (unnormalised). ``kind="full"`` gives the ``(n·c) × (n·c)`` kernel,
``kind="trace"`` gives ``Σ_j K_jj`` (``n × n``); for ``c = 1`` both are the same. The Gauss-Newton
Hessian of the mean-MSE loss is ``(2/(n·c)) JᵀJ``, so the critical GD learning rate is
``η_crit = n·c / λ_max(K)``.

Methods (``empirical_ntk(..., method=...)``), all exact:

============ ================================================== ==================================
method       how                                                fastest when
============ ================================================== ==================================
``rules``    one forward pass with hooks, one backward pass per  the model is built of layers with
             output; each ruled layer's exact contribution       a rule (dense, conv, norms,
             (:mod:`~catapults.curvature.ntk_rules`), the        embedding, attention): no
             generic path for the parameters no rule covers,     per-sample backward pass at all;
             summed                                              MLPs, CNNs, ResNets, ViTs
``jacobian`` per-sample Jacobians by ``vmap(jacrev)`` in chunks  few parameters, or modules
             sized from ``memory_budget``, then ``J Jᵀ``         without rules
``matvec``   ``K`` column block by column block from             huge ``p`` with few samples
             ``K V = J (Jᵀ V)`` (batched VJP + JVP), J never     (``n·c`` small): memory
             formed                                              ``O(n·c·block)``, no ``J``
``auto``     ``rules`` when rules that avoid per-sample          (the default)
             gradients (dense layers on vectors, not over
             positions; norms, embeddings) cover at least
             half of the trainable parameters, else
             ``jacobian``
============ ================================================== ==================================

Measured (docs/benchmarks.md, 2-core AMD EPYC): on an MLP the rules path is the old fast path
(at the FLOP floor at n = 1000); on a conv net whose weights are mostly in 3×3 convolutions on
16×16-32×32 maps, the exact kernel needs the per-sample weight gradients either way (one forward
pass, one backward pass, the gradients, their Gram). On a quiet machine (2 threads) the generic
path, in chunks that keep feature maps in cache, ran at 1.13-1.48x that FLOP floor, and the conv
rule (strided patches and batched products) at 0.80-0.89x the generic path's speed, so ``auto``
takes ``jacobian`` there (convolution and local-VJP rules are marked ``per_sample``). ``rules``
pays off for mixed models where the rest of the weights are dense layers, norms or embeddings.

``"fast"`` and ``"generic"`` are the old names of ``"rules"`` and ``"jacobian"``.
Every method refuses models whose per-sample outputs depend on other samples (BatchNorm in
training mode, for example) and returns an exactly symmetric kernel. The rules path first
checks that the rules describe the model (:mod:`~catapults.curvature.ntk_rules.verify`; once
per model and input shape): where they do not, ``auto`` takes ``jacobian`` and ``rules``
raises. Eigenpairs, critical rates and the loss split are in
:mod:`catapults.curvature.spectrum`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from catapults.curvature.checks import (
    check_per_sample,
    kernel_module,
    on_model_device,
    trainable_params,
)
from catapults.curvature.ntk_rules import attention, embedding, norm  # noqa: F401 (rules)
from catapults.curvature.ntk_rules.conv import register_conv_rule
from catapults.curvature.ntk_rules.engine import (
    Plan,
    factor_bytes,
    plan,
    remainder_jacobian,
    rules_factors,
    rules_ntk,
)
from catapults.curvature.ntk_rules.generic import (
    Probe,
    activation_sizes,
    generic_ntk,
    per_sample_jacobian,
)
from catapults.curvature.ntk_rules.linear import LINEAR_RULES, register_linear_rule
from catapults.curvature.ntk_rules.products import factor_products
from catapults.curvature.ntk_rules.registry import (
    NTK_RULES,
    GradFactor,
    HadamardFactor,
    NTKRule,
    RulesMismatch,
    register_ntk_rule,
    unregister_ntk_rule,
)
from catapults.curvature.ntk_rules.verify import verify_rules
from catapults.curvature.precision import exact_products, full_float32
from catapults.errors import KernelError
from catapults.linalg.gram import mirror_upper_

__all__ = ["LINEAR_RULES", "METHODS", "NTK_RULES", "GradFactor", "HadamardFactor", "NTKRule",
           "PRODUCTS", "empirical_ntk", "ntk_matvec", "per_sample_jacobian", "register_conv_rule",
           "register_linear_rule", "register_ntk_rule", "unregister_ntk_rule"]

METHODS = ("auto", "rules", "jacobian", "matvec")
_ALIASES = {"fast": "rules", "generic": "jacobian"}
AUTO_RULES_FRACTION = 0.5


# ---- public API -----------------------------------------------------------------------------
@full_float32()
def empirical_ntk(
    model: nn.Module,
    X: Tensor,
    *,
    kind: str = "full",
    method: str = "auto",
    chunk_size: int | None = None,
    memory_budget: float = 2e9,
    check: bool = True,
    return_outputs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The empirical NTK ``K = J Jᵀ`` of ``model`` on inputs ``X`` (shape ``(n, ...)``).

    Args:
        kind: ``"full"`` (the default, as everywhere in the toolkit: ``(n·c) × (n·c)``, row
            ``i*c + j`` is output ``j`` of sample ``i``) or ``"trace"`` (``n × n``,
            ``Σ_j K_jj``). Identical for scalar outputs.
        method: ``"auto"``, ``"rules"``, ``"jacobian"`` or ``"matvec"`` (the table of the
            module docstring; ``"fast"``/``"generic"`` are the old names of rules/jacobian).
        chunk_size: samples per chunk (``vmap(jacrev)`` on the generic path, forward/backward
            passes on the rules path); ``None`` (default) takes as many as fit in
            ``memory_budget`` while the largest activation of a chunk stays a few MB (in
            cache; all samples at once for small models: one unchunked ``vmap(jacrev)``, see
            :mod:`catapults.curvature.ntk_rules.generic`).
        memory_budget: bytes the generic path may use (the Jacobian and vmap's activations).
        check: refuse models whose outputs mix samples (see :func:`check_per_sample`).
        return_outputs: also return the outputs ``f(X)`` of shape ``(n, c)`` (free on the rules
            path, which runs the forward pass anyway).

    A model with a ``tangent_module()`` method (:func:`~catapults.curvature.checks.kernel_module`)
    has its kernel computed on that module.

    Returns:
        ``K`` in the model's device and ``X``'s dtype (``X`` is moved to the model's device).
        Parameters with ``requires_grad=False`` are excluded.
    """
    if kind not in ("trace", "full"):
        raise KernelError(f"kind must be 'trace' or 'full', got {kind!r}")
    method = one_of("method", _ALIASES.get(method, method), METHODS)
    X = _prepared(model, X, memory_budget, check)
    if kernel_module(model) is not model:  # e.g. a linearised network: the kernel of its base
        K = empirical_ntk(kernel_module(model), X, kind=kind, method=method,
                          chunk_size=chunk_size, memory_budget=memory_budget, check=False)
        if not return_outputs:
            return K
        with torch.no_grad():
            return K, model(X).reshape(X.shape[0], -1)
    out = probe = None
    chose_rules = False
    if method in ("auto", "rules"):
        pl = plan(model)  # checks each ruled module (BatchNorm in training mode: KernelError)
        if method == "auto":
            probe = auto_probe(model, X, pl)
            method = _auto_method(model, X, pl, memory_budget, probe=probe)
            chose_rules = method == "rules"
    if method == "rules":
        try:
            verify_rules(model, X, pl)
            K, out = rules_ntk(model, X, kind, memory_budget=memory_budget,
                               chunk_size=chunk_size, the_plan=pl, probe=probe)
        except RulesMismatch:
            if not chose_rules:
                raise
            method = "jacobian"  # auto: the rules do not describe this model
    if method == "jacobian":
        K = generic_ntk(model, X, kind, chunk_size, memory_budget, probe=probe)
    elif method == "matvec":
        K = _matvec_ntk(model, X, kind, chunk_size or 64)
    if not return_outputs:
        return K
    if out is None:
        with torch.no_grad():
            out = model(X).reshape(X.shape[0], -1)
    return K, out


def one_of(field: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a KernelError naming ``field``."""
    if value not in allowed:
        raise KernelError(f"{field} must be one of {', '.join(map(repr, allowed))}, "
                          f"got {value!r}")
    return value


def _prepared(model: nn.Module, X: Tensor, memory_budget: float, check: bool) -> Tensor:
    """The checks every kernel entry point makes; returns ``X`` on the model's device."""
    check_budget(memory_budget)
    if X.shape[0] == 0:
        raise KernelError("X has no samples")
    X = on_model_device(model, X)
    if check:
        check_per_sample(model, X)
    return X


def check_budget(memory_budget: float) -> None:
    """A memory budget must be a positive, finite number of bytes."""
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or \
            not math.isfinite(memory_budget) or memory_budget <= 0:
        raise KernelError(f"memory_budget must be a positive number of bytes, got "
                          f"{memory_budget!r}")


def _auto_method(model: nn.Module, X: Tensor, pl: Plan, memory_budget: float = 2e9, *,
                 cuda: bool | None = None, probe: Probe | None = None) -> str:
    """``"rules"`` when rules that form no per-sample gradients cover at least
    :data:`AUTO_RULES_FRACTION` of the trainable parameters, else ``"jacobian"``. A dense layer
    applied over positions (an input with more than two dimensions: tokens, a ViT's patches)
    does not count: its exact kernel needs per-sample gradients or ``(n·T)²`` products, and on
    a small ViT the rules path measured 1.8x slower than ``jacobian`` (docs/benchmarks.md). The
    input shapes come from one forward pass on the first sample.

    The rules marked ``fast_on_cuda`` (convolutions) count too on a CUDA device, where the conv
    rule was 1.9-4.3x faster than ``jacobian`` on the issue's CNN and 8.7x on WRN-16-4 (an
    H200; on a CPU 0.80-0.89x), and on a CPU when ``J`` (``n·c·p`` numbers) does not fit in
    ``memory_budget``: the generic path then recomputes Jacobian blocks, and the rules path,
    in groups of modules whose factors fit (:func:`~.ntk_rules.engine.rules_ntk`), was 2.8x
    faster on WRN-16-4 at n = 256 (23 s against 65 s, one thread; docs/benchmarks.md).
    ``cuda``: decide as for a CUDA device or not (default: ``X``'s device). ``probe``:
    :func:`auto_probe` of the model, when the caller has it."""
    if probe is None or probe.wide_inputs is None:  # a probe that watched no inputs
        probe = auto_probe(model, X, pl)
    p = {id(v): v.numel() for v in model.parameters() if v.requires_grad}
    covered = sum(p[i] for r in pl.ruled if not r.rule.per_sample
                  and r.name not in probe.wide_inputs for i in r.want.values())
    on_cuda = X.device.type == "cuda" if cuda is None else cuda
    rows = X.shape[0] * probe.outputs
    if on_cuda or rows * sum(p.values()) * probe.itemsize > memory_budget:
        covered += sum(p[i] for r in pl.ruled if r.rule.per_sample and r.rule.fast_on_cuda
                       for i in r.want.values())
    return "rules" if covered / max(1, sum(p.values())) >= AUTO_RULES_FRACTION else "jacobian"


def auto_probe(model: nn.Module, X: Tensor, pl: Plan) -> Probe:
    """The one forward pass on ``X[:1]`` that both :func:`_auto_method` (which cheap rules see
    inputs of more than two dimensions) and the chosen path (output width, activation sizes)
    read."""
    return activation_sizes(model, X[:1], watch={r.name: r.module for r in pl.ruled
                                                 if not r.rule.per_sample})


def _matvec_ntk(model: nn.Module, X: Tensor, kind: str, block: int) -> Tensor:
    """``K`` from ``K E`` for blocks of ``block`` unit vectors (batched VJP + JVP)."""
    mv = ntk_matvec(model, X, product="autograd")
    with torch.no_grad():
        out = model(X)
    N, n = out.numel(), X.shape[0]
    K = torch.empty(N, N, dtype=out.dtype, device=X.device)
    eye = torch.eye(N, dtype=out.dtype, device=X.device)
    for a in range(0, N, block):
        K[:, a:a + block] = mv(eye[:, a:a + block])
    mirror_upper_(K)
    if kind == "trace" and N > n:
        K = K.view(n, N // n, n, N // n).diagonal(dim1=1, dim2=3).sum(-1)
    return K


PRODUCTS = ("auto", "factors", "autograd")


@exact_products
def ntk_matvec(model: nn.Module, X: Tensor, *, product: str = "auto",
               memory_budget: float = 2e9, check: bool = True) -> Callable[[Tensor], Tensor]:
    """``v ↦ K v = J (Jᵀ v)`` for ``v`` of shape ``(n·c,)`` or ``(n·c, k)`` (full kernel), K
    never formed.

    Args:
        product: how each product is computed:

            - ``"factors"``: the rules' factors (:mod:`catapults.curvature.ntk_rules`) are formed
              once, by one forward pass and one backward pass per output, and every product is
              two matrix products per layer with no pass through the network
              (:mod:`~catapults.curvature.ntk_rules.products`; 2-3x fewer flops than a VJP and a
              JVP on dense layers, far fewer on convolutions). Memory: the factors, i.e. each
              dense layer's inputs and output gradients (``n·(d_in + c·d_out)``, like the
              activations autograd keeps), each convolution's per-sample gradients
              (``n·c·p_l``), and the per-sample Jacobian of the parameters no rule covers.
            - ``"autograd"``: one VJP and one JVP through the network per vector (batched over
              the columns of a block with vmap), ``J`` never formed: memory of one forward
              pass per column.
            - ``"auto"`` (default): ``"factors"`` when they fit in half of ``memory_budget``
              (estimated from the first chunk of samples; the uncovered parameters' Jacobian
              separately, else their products by autograd), otherwise ``"autograd"``.
        memory_budget: bytes for the factors and the forward/backward passes forming them.
        check: refuse models whose outputs mix samples (see :func:`check_per_sample`).

    The rules are checked against autograd on a few samples first
    (:mod:`~catapults.curvature.ntk_rules.verify`); where they do not describe the model,
    ``"auto"`` takes the autograd products and ``"factors"`` raises :class:`KernelError`.
    """
    product = one_of("product", {"rules": "factors"}.get(product, product), PRODUCTS)
    X = _prepared(model, X, memory_budget, check)
    model = kernel_module(model)
    if product != "autograd":
        try:
            mv = _factor_matvec(model, X, memory_budget, strict=product == "factors")
        except RulesMismatch:
            if product == "factors":
                raise
            mv = None
        if mv is not None:
            return mv
    return _autograd_matvec(model, X)


def _factor_matvec(model: nn.Module, X: Tensor, memory_budget: float, *, strict: bool
                   ) -> Callable[[Tensor], Tensor] | None:
    """Products from stored factors (see :func:`ntk_matvec`); None when they would not fit
    (``strict``: no limit)."""
    limit = None if strict else memory_budget / 2
    pl = plan(model)
    verify_rules(model, X, pl)
    got = rules_factors(model, X, memory_budget=memory_budget, max_factor_bytes=limit,
                        the_plan=pl)
    if got is None:
        return None
    factors, pl, f = got
    n, c, dtype = X.shape[0], f.shape[1], f.dtype
    rest = None
    if pl.remainder:
        allp = dict(model.named_parameters())
        p_rest = sum(allp[k].numel() for k in pl.remainder)
        if limit is None or n * c * p_rest * f.element_size() <= limit - factor_bytes(factors):
            jac = remainder_jacobian(model, X, pl, memory_budget / 2)  # the factors hold the rest
            factors = [*factors, GradFactor(jac)]
        else:
            rest = _autograd_matvec(model, X, names=pl.remainder)
    mv_f = factor_products(factors, n, c)
    inner = next((fa.G if isinstance(fa, GradFactor) else fa.H).dtype for fa in factors) \
        if factors else dtype  # the factors' dtype: the model's, which the outputs may not be

    def mv(v: Tensor) -> Tensor:
        if v.shape[0] != n * c or v.dim() > 2:
            raise KernelError(f"v must have shape (n·c,) or (n·c, k) with n·c = {n * c}, got "
                              f"{tuple(v.shape)}")
        out = mv_f(v.to(inner)).to(dtype)
        return out if rest is None else out + rest(v.to(dtype))

    return mv


def _autograd_matvec(model: nn.Module, X: Tensor, names: list[str] | None = None
                     ) -> Callable[[Tensor], Tensor]:
    """Products by one VJP and one JVP per vector, over the parameters ``names`` (default:
    all trainable; the others held fixed)."""
    allp = dict(model.named_parameters())
    if names is None:
        params = {k: v.detach() for k, v in trainable_params(model).items()}
    else:
        params = {k: allp[k].detach() for k in names}
    fixed = {k: v.detach() for k, v in allp.items() if k not in params}
    buffers = dict(model.named_buffers())

    def f(p):
        return functional_call(model, (p, fixed, buffers), (X,)).reshape(-1)

    out0, pullback = vjp(f, params)

    def mv1(v: Tensor) -> Tensor:
        (ct,) = pullback(v)
        return jvp(f, (params,), (ct,))[1]

    def mv(v: Tensor) -> Tensor:
        v = v.to(out0.dtype)
        try:
            if v.dim() == 1:
                return mv1(v).detach()
            return vmap(mv1, in_dims=1, out_dims=1)(v).detach()
        except NotImplementedError as e:  # an op without forward-mode AD (fused attention)
            raise KernelError(
                f"the autograd kernel product needs forward-mode AD, which an operation of this "
                f"model does not support ({str(e).splitlines()[0]}); form the kernel with "
                "empirical_ntk(method='jacobian') or use product='factors' where the layer rules "
                "apply") from e

    return mv
