"""The empirical neural tangent kernel ``K = J Jᵀ``, computed exactly (docs/conventions.md).

Conventions. ``J ∈ R^{(n·c) × p}`` is the Jacobian of the outputs ``f(X) ∈ R^{n×c}`` (flattened
sample-major: row ``i*c + j`` is output ``j`` of sample ``i``) with respect to the trainable
parameters; ``K = J Jᵀ`` (unnormalised). ``kind="full"`` gives the ``(n·c) × (n·c)`` kernel,
``kind="trace"`` gives ``Σ_j K_jj`` (``n × n``); for ``c = 1`` both are the same. The Gauss-Newton
Hessian of the mean-MSE loss is ``(2/(n·c)) JᵀJ``, so the critical GD learning rate is
``η_crit = n·c / λ_max(K)``.

Two exact paths compute K:

- **fast** (models whose trainable parameters all sit in linear layers of a type in
  :data:`LINEAR_RULES`: ``nn.Linear``, ``ScaledLinear``, or any registered with
  :func:`register_linear_rule`, each applied once to 2-D inputs): one forward pass records each
  layer's input ``A`` and one backward pass per output gives the gradients ``G`` at its output;
  then
  ``K = Σ_l s_l² (A_l A_lᵀ) ∘ (G_l G_lᵀ) + β_l² G_l G_lᵀ``. Gram matrices are formed blockwise
  on the upper triangle only (half the flops of a plain ``A @ A.T``), see
  :mod:`catapults.linalg.gram`.
- **generic** (any other module): per-sample Jacobians with ``torch.func.vmap(jacrev)``, in chunks
  sized from a memory budget (:mod:`catapults.curvature.ntk_rules.generic`), contracted to ``J Jᵀ``.

Both refuse models whose per-sample outputs depend on other samples (BatchNorm in training mode,
for example): the kernel is not defined sample by sample there. Every path returns an exactly
symmetric kernel. Eigenpairs, critical rates and the loss split are in
:mod:`catapults.curvature.spectrum`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from catapults.curvature.checks import check_per_sample, on_model_device, trainable_params
from catapults.curvature.ntk_rules.generic import generic_ntk, per_sample_jacobian
from catapults.errors import KernelError
from catapults.linalg.gram import gram, mirror_upper_, sum_of_gram_products

__all__ = ["LINEAR_RULES", "empirical_ntk", "ntk_matvec", "per_sample_jacobian",
           "register_linear_rule"]

# ---- layer rules ------------------------------------------------------------------------------
LinearScales = Callable[[nn.Module], tuple[float, float]]
LINEAR_RULES: dict[type[nn.Module], LinearScales] = {nn.Linear: lambda mod: (1.0, 1.0)}
"""Module types that the fast path treats as linear layers, each mapped to a function giving
``(weight_scale, bias_scale)``: the layer computes ``weight_scale · x Wᵀ + bias_scale · b`` with
``W`` in ``.weight`` (``(out, in)``) and ``b`` in ``.bias`` (or None)."""


def register_linear_rule(cls: type[nn.Module], scales: LinearScales) -> None:
    """Let the fast path handle layers of type ``cls`` (and its subclasses): ``scales(module)``
    returns ``(weight_scale, bias_scale)`` of ``y = weight_scale · x Wᵀ + bias_scale · b``.
    :class:`catapults.models.ScaledLinear` registers itself this way."""
    LINEAR_RULES[cls] = scales


def _linear_rule(mod: nn.Module) -> LinearScales | None:
    for cls in type(mod).__mro__:
        if cls in LINEAR_RULES:
            return LINEAR_RULES[cls]
    return None


# ---- fast path: layer-wise Gram formula -------------------------------------------------------
def _linear_layers(model: nn.Module) -> list[nn.Module] | None:
    """The layers of the fast path, or None when some trainable parameter is elsewhere."""
    layers, covered = [], set()
    for mod in model.modules():
        if _linear_rule(mod) is not None:
            own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
            if own:
                layers.append(mod)
                covered.update(id(p) for p in own)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable or any(id(p) not in covered for p in trainable):
        return None
    return layers


def _scales(mod: nn.Module) -> tuple[float, float]:
    rule = _linear_rule(mod)
    assert rule is not None
    return rule(mod)


def _record_layers(model: nn.Module, X: Tensor, layers: list[nn.Module]
                   ) -> tuple[Tensor, list[Tensor], list[Tensor]] | None:
    """One forward pass of ``model`` on ``X`` recording each layer's input ``A_l`` and output
    ``z_l``: ``(f(X), [A_l], [z_l])``, or None when a layer ran more than once (shared weights)
    or on an input that is not 2-D (the generic path handles those)."""
    inputs: dict[int, list[Tensor]] = {id(m): [] for m in layers}
    outputs: dict[int, list[Tensor]] = {id(m): [] for m in layers}

    def hook(mod, args, out):
        inputs[id(mod)].append(args[0])
        outputs[id(mod)].append(out)

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            f = model(X)
    finally:
        for h in handles:
            h.remove()
    if any(len(inputs[id(m)]) != 1 or inputs[id(m)][0].dim() != 2 for m in layers):
        return None
    return f, [inputs[id(m)][0].detach() for m in layers], [outputs[id(m)][0] for m in layers]


def _output_gradients(f: Tensor, zs: list[Tensor]) -> list[list[Tensor]]:
    """``G[l][j]``: the ``(n, out_l)`` gradients of ``Σ_i f_j(x_i)`` at layer l's output, which
    are the per-sample gradients (one backward pass per output ``j``)."""
    c = f.shape[1]
    G: list[list[Tensor]] = [[] for _ in zs]
    for j in range(c):
        grads = torch.autograd.grad(f[:, j].sum(), zs, retain_graph=j < c - 1,
                                    allow_unused=True)
        for li, g in enumerate(grads):
            G[li].append(torch.zeros_like(zs[li]) if g is None else g.detach())
    return G


def _trace_kernel(layers: list[nn.Module], A: list[Tensor], G: list[list[Tensor]], n: int,
                  dtype: torch.dtype, device: torch.device) -> Tensor:
    """``K = Σ_l (G_l G_lᵀ) ∘ (s_l² A_l A_lᵀ + β_l²)`` (``n × n``; the trace kernel, or the full
    one for c = 1), summed block row by block row on the upper triangle, mirrored once."""
    terms: list[tuple[Tensor, Tensor | None, float, float]] = []
    for li, mod in enumerate(layers):
        s, beta = _scales(mod)
        has_w = mod.weight.requires_grad
        has_b = mod.bias is not None and mod.bias.requires_grad
        Gcat = torch.cat(G[li], dim=1) if len(G[li]) > 1 else G[li][0]
        if has_w and not has_b and Gcat.shape[1] == 1:
            terms.append((A[li] * Gcat, None, s * s, 0.0))  # (A Aᵀ)∘(g gᵀ) = (g∘A)(g∘A)ᵀ
        elif has_w:
            terms.append((Gcat, A[li], s * s, beta * beta if has_b else 0.0))
        elif has_b:
            terms.append((Gcat, None, beta * beta, 0.0))
    return sum_of_gram_products(terms, n, dtype, device)


def _full_kernel(layers: list[nn.Module], A: list[Tensor], G: list[list[Tensor]], n: int,
                 dtype: torch.dtype, device: torch.device) -> Tensor:
    """The full ``(n·c) × (n·c)`` kernel: block ``(j, j')`` is
    ``Σ_l (G_lj G_lj'ᵀ) ∘ (s_l² A_l A_lᵀ + β_l²)``; exactly symmetric."""
    c = len(G[0])
    K = torch.zeros(n * c, n * c, dtype=dtype, device=device)
    Kv = K.view(n, c, n, c)
    for li, mod in enumerate(layers):
        s, beta = _scales(mod)
        has_w = mod.weight.requires_grad
        has_b = mod.bias is not None and mod.bias.requires_grad
        P = gram(A[li]) if has_w else None
        for j in range(c):
            for jj in range(j, c):
                Q = G[li][j] @ G[li][jj].T
                block = Q * (beta * beta) if has_b else torch.zeros_like(Q)
                if has_w:
                    block.add_(Q.mul_(P), alpha=s * s)
                Kv[:, j, :, jj] += block
                if jj != j:
                    Kv[:, jj, :, j] += block.T
    return mirror_upper_(K)


def _fast_ntk(model: nn.Module, X: Tensor, layers: list[nn.Module], kind: str,
              outputs_sink: list[Tensor] | None = None) -> Tensor | None:
    """The layer-wise kernel from one forward and ``c`` backward passes, or None when the model
    does not fit the fast path (the caller then uses the generic one)."""
    recorded = _record_layers(model, X, layers)
    if recorded is None:
        return None
    f, A, zs = recorded
    n = X.shape[0]
    f = f.reshape(n, -1)
    if outputs_sink is not None:
        outputs_sink.append(f.detach())
    G = _output_gradients(f, zs)
    if kind == "trace" or f.shape[1] == 1:
        return _trace_kernel(layers, A, G, n, X.dtype, X.device)
    return _full_kernel(layers, A, G, n, X.dtype, X.device)


# ---- public API -----------------------------------------------------------------------------
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
        method: ``"auto"`` (fast path when the model allows it), ``"fast"`` or ``"generic"``.
        chunk_size: samples per ``vmap(jacrev)`` chunk on the generic path; ``None`` (default)
            takes as many as fit in ``memory_budget`` (all of them when they fit: one
            unchunked ``vmap(jacrev)``, see :mod:`catapults.curvature.ntk_rules.generic`).
        memory_budget: bytes the generic path may use (the Jacobian and vmap's activations).
        check: refuse models whose outputs mix samples (see :func:`check_per_sample`).
        return_outputs: also return the outputs ``f(X)`` of shape ``(n, c)`` (free on the fast
            path, which runs the forward pass anyway).

    Returns:
        ``K`` in the model's device and ``X``'s dtype (``X`` is moved to the model's device).
        Parameters with ``requires_grad=False`` are excluded.
    """
    if kind not in ("trace", "full"):
        raise KernelError(f"kind must be 'trace' or 'full', got {kind!r}")
    if method not in ("auto", "fast", "generic"):
        raise KernelError(f"method must be 'auto', 'fast' or 'generic', got {method!r}")
    if X.shape[0] == 0:
        raise KernelError("X has no samples")
    X = on_model_device(model, X)
    if check:
        check_per_sample(model, X)
    sink: list[Tensor] = []
    K = None
    if method in ("auto", "fast"):
        layers = _linear_layers(model)
        K = _fast_ntk(model, X, layers, kind, sink) if layers is not None else None
        if K is None and method == "fast":
            raise KernelError("the fast path needs every trainable parameter in a linear layer "
                           "applied once to 2-D inputs; use method='generic'")
    if K is None:
        K = generic_ntk(model, X, kind, chunk_size, memory_budget)
    if not return_outputs:
        return K
    if not sink:
        with torch.no_grad():
            sink.append(model(X).reshape(X.shape[0], -1))
    return K, sink[0]


def ntk_matvec(model: nn.Module, X: Tensor) -> Callable[[Tensor], Tensor]:
    """``v ↦ K v = J (Jᵀ v)`` for ``v`` of shape ``(n·c,)`` or ``(n·c, k)``, J never formed
    (one VJP and one JVP per vector, batched over columns with vmap)."""
    params = {k: v.detach() for k, v in trainable_params(model).items()}
    buffers = dict(model.named_buffers())

    def f(p):
        return functional_call(model, (p, buffers), (X,)).reshape(-1)

    out0, pullback = vjp(f, params)

    def mv1(v: Tensor) -> Tensor:
        (ct,) = pullback(v)
        return jvp(f, (params,), (ct,))[1]

    def mv(v: Tensor) -> Tensor:
        v = v.to(out0.dtype)
        if v.dim() == 1:
            return mv1(v).detach()
        return vmap(mv1, in_dims=1, out_dims=1)(v).detach()

    return mv
