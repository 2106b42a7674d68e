"""The empirical neural tangent kernel: exact kernels, top eigenpairs, critical learning rates
and the top-eigenspace loss split (SPEC.md section 1).

Conventions. ``J ∈ R^{(n·c) × p}`` is the Jacobian of the outputs ``f(X) ∈ R^{n×c}`` (flattened
sample-major: row ``i*c + j`` is output ``j`` of sample ``i``) with respect to the trainable
parameters; ``K = J Jᵀ`` (unnormalised). ``kind="full"`` gives the ``(n·c) × (n·c)`` kernel,
``kind="trace"`` gives ``Σ_j K_jj`` (``n × n``); for ``c = 1`` both are the same. The Gauss-Newton
Hessian of the mean-MSE loss is ``(2/(n·c)) JᵀJ``, so the critical GD learning rate is
``η_crit = n·c / λ_max(K)``.

Two exact paths compute K:

- **fast** (models whose trainable parameters all sit in ``nn.Linear`` / ``ScaledLinear`` layers
  applied once to 2-D inputs): one forward pass records each layer's input ``A`` and one backward
  pass per output gives the gradients ``G`` at its output; then
  ``K = Σ_l s_l² (A_l A_lᵀ) ∘ (G_l G_lᵀ) + β_l² G_l G_lᵀ``. Gram matrices are formed blockwise
  on the upper triangle only (half the flops of a plain ``A @ A.T``).
- **generic** (any other module): per-sample Jacobians with ``torch.func.vmap(jacrev)``, chunked
  over samples so memory stays bounded, contracted to ``J Jᵀ``.

Both refuse models whose per-sample outputs depend on other samples (BatchNorm in training mode,
for example): the kernel is not defined sample by sample there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from catapults.models import ScaledLinear


class NTKError(ValueError):
    """The kernel cannot be computed for this model or input (the message says why)."""


# ---- checks ---------------------------------------------------------------------------------
_BATCH_MIXING = (nn.modules.batchnorm._BatchNorm,)


def check_per_sample(model: nn.Module | Callable[[Tensor], Tensor], X: Tensor,
                     *, probe: int = 4, quantity: str = "the per-sample kernel",
                     error: type[Exception] = NTKError) -> None:
    """Refuse models whose output for one sample depends on the other samples of the batch.

    BatchNorm layers in training mode are refused by name, without running them (running them
    would also update their statistics). Any other mixing (or randomness such as dropout in
    training mode) is caught numerically: the outputs of the first few samples computed alone
    must equal their outputs within the whole batch.
    """
    if isinstance(model, nn.Module):
        for name, mod in model.named_modules():
            if isinstance(mod, _BATCH_MIXING) and mod.training:
                raise error(
                    f"module {name or type(mod).__name__!r} ({type(mod).__name__}) is in training "
                    f"mode: its outputs mix the samples of a batch, so {quantity} is not "
                    "defined; call model.eval() first")
    if X.shape[0] < 2:
        return
    m = min(probe, X.shape[0] - 1)
    with torch.no_grad():
        full = model(X[: m + 1])
        alone = model(X[:m])
    full, alone = full[:m].reshape(m, -1), alone.reshape(m, -1)
    if not torch.isfinite(full).all():
        raise error("the model's outputs are not finite")
    scale = full.abs().max().clamp_min(1e-30)
    tol = 1e3 * torch.finfo(full.dtype).eps if full.is_floating_point() else 0.0
    if ((full - alone).abs().max() / scale) > tol:
        raise error(
            "the model's output for a sample depends on the other samples in the batch (or is "
            f"random, e.g. dropout in training mode), so {quantity} is not defined. "
            "Use model.eval() or a model without batch-mixing layers")


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


# ---- Gram matrices --------------------------------------------------------------------------
def _default_block(n: int) -> int:
    # rows per block of the upper-triangle Gram products: small enough that the skipped lower
    # triangle is most of the saving (k blocks cost (k+1)/(2k) of a full product), large
    # enough for efficient matmuls; 256-384 measured fastest for n = 1000-4000 on a 2-core CPU
    return 256 if n <= 2048 else 384


def gram(A: Tensor, *, block: int | None = None) -> Tensor:
    """``A @ A.T`` for ``A`` of shape ``(n, m)``, computing only upper-triangular blocks.

    The rows are split into blocks of ``block`` rows; ``k(k+1)/2`` of the ``k²`` blocks are
    computed (one matmul per row of blocks) and mirrored, so the flops approach half of a plain
    matmul. For ``n <= block`` this is a single matmul.
    """
    n = A.shape[0]
    if block is None:
        block = _default_block(n)
    if n <= block:
        return A @ A.T
    out = torch.empty(n, n, dtype=A.dtype, device=A.device)
    starts = list(range(0, n, block))
    for bi, i in enumerate(starts):
        Ai = A[i:i + block]
        # one matmul for the whole row of blocks right of (and including) the diagonal block
        row = Ai @ A[i:].T
        out[i:i + block, i:] = row
        if bi + 1 < len(starts):
            out[i + block:, i:i + block] = row[:, Ai.shape[0]:].T
    return out


# ---- fast path: layer-wise Gram formula -------------------------------------------------------
def _linear_layers(model: nn.Module) -> list[nn.Module] | None:
    """The layers of the fast path, or None when some trainable parameter is elsewhere."""
    layers, covered = [], set()
    for mod in model.modules():
        if isinstance(mod, (ScaledLinear, nn.Linear)):
            own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
            if own:
                layers.append(mod)
                covered.update(id(p) for p in own)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable or any(id(p) not in covered for p in trainable):
        return None
    return layers


def _scales(mod: nn.Module) -> tuple[float, float]:
    if isinstance(mod, ScaledLinear):
        return mod.weight_scale, mod.bias_scale
    return 1.0, 1.0


def _sum_of_gram_products(terms: list[tuple[Tensor, Tensor | None, float, float]], n: int,
                          dtype: torch.dtype, device: torch.device,
                          block: int | None = None) -> Tensor:
    """``Σ (H Hᵀ) ∘ (cw · F Fᵀ + cb)`` over ``terms = [(H, F, cw, cb)]`` (``cw · H Hᵀ`` where
    ``F`` is None), an ``n × n`` symmetric matrix. Works one row of blocks at a time on the upper
    triangle (each factor's Gram block computed once, the products and sums done on the block
    while it is hot) and mirrors each block row once: about half the flops of full Gram matrices
    and a single pass of n² writes plus one transposed copy, instead of one per Gram."""
    if block is None:
        block = _default_block(n)
    K = torch.empty(n, n, dtype=dtype, device=device)
    for i in range(0, n, block):
        r = slice(i, i + block)
        acc: Tensor | None = None
        for H, F, cw, cb in terms:
            Q = H[r] @ H[i:].T
            if F is not None:
                P = F[r] @ F[i:].T
                if cw != 1.0:
                    P.mul_(cw)
                if cb != 0.0:
                    P.add_(cb)
                Q.mul_(P)
            elif cw != 1.0:
                Q.mul_(cw)
            acc = Q if acc is None else acc.add_(Q)
        if acc is None:
            acc = torch.zeros(min(block, n - i), n - i, dtype=dtype, device=device)
        K[r, i:] = acc
        if i + block < n:
            K[i + block:, r] = acc[:, block:].T
    return K


def _fast_ntk(model: nn.Module, X: Tensor, layers: list[nn.Module], kind: str,
              outputs_sink: list[Tensor] | None = None) -> Tensor | None:
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
        return None  # weight sharing or non-2-D inputs: use the generic path
    n = X.shape[0]
    f = f.reshape(n, -1)
    if outputs_sink is not None:
        outputs_sink.append(f.detach())
    c = f.shape[1]
    zs = [outputs[id(m)][0] for m in layers]
    # G[l][j]: (n, out_l) gradients of sum_i f_j(x_i) at layer l's output = per-sample gradients
    G: list[list[Tensor]] = [[] for _ in layers]
    for j in range(c):
        grads = torch.autograd.grad(f[:, j].sum(), zs, retain_graph=j < c - 1,
                                    allow_unused=True)
        for li, g in enumerate(grads):
            G[li].append(torch.zeros_like(zs[li]) if g is None else g.detach())
    if kind == "trace" or c == 1:
        # K = Σ_terms (H Hᵀ) ∘ (cw·F Fᵀ + cb)  (or cw·H Hᵀ without F), summed block row by
        # block row on the upper triangle, then mirrored once
        terms: list[tuple[Tensor, Tensor | None, float, float]] = []
        for li, mod in enumerate(layers):
            A = inputs[id(mod)][0].detach()
            s, beta = _scales(mod)
            has_w = mod.weight.requires_grad
            has_b = mod.bias is not None and mod.bias.requires_grad
            Gcat = torch.cat(G[li], dim=1) if c > 1 else G[li][0]
            if has_w and not has_b and Gcat.shape[1] == 1:
                terms.append((A * Gcat, None, s * s, 0.0))  # (A Aᵀ)∘(g gᵀ) = (g∘A)(g∘A)ᵀ
            elif has_w:
                terms.append((Gcat, A, s * s, beta * beta if has_b else 0.0))
            elif has_b:
                terms.append((Gcat, None, beta * beta, 0.0))
        return _sum_of_gram_products(terms, n, X.dtype, X.device)
    size = n * c
    K = torch.zeros(size, size, dtype=X.dtype, device=X.device)
    for li, mod in enumerate(layers):
        A = inputs[id(mod)][0].detach()
        s, beta = _scales(mod)
        has_w = mod.weight.requires_grad
        has_b = mod.bias is not None and mod.bias.requires_grad
        P = gram(A) if has_w else None
        Kv = K.view(n, c, n, c)
        for j in range(c):
            for jj in range(j, c):
                Q = G[li][j] @ G[li][jj].T
                block = Q * (beta * beta) if has_b else torch.zeros_like(Q)
                if has_w:
                    block.add_(Q.mul_(P), alpha=s * s)
                Kv[:, j, :, jj] += block
                if jj != j:
                    Kv[:, jj, :, j] += block.T
    return K


# ---- generic path: per-sample Jacobians ------------------------------------------------------
def per_sample_jacobian(model: nn.Module, X: Tensor, *, chunk_size: int = 64) -> Tensor:
    """The Jacobian ``J`` of shape ``(n·c, p)`` (sample-major rows) over trainable parameters,
    from ``vmap(jacrev)`` in chunks of ``chunk_size`` samples."""
    params = _trainable(model)
    buffers = dict(model.named_buffers())

    def f_single(p, x):
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).reshape(-1)

    jac_fn = vmap(jacrev(f_single), in_dims=(None, 0))
    rows = []
    for i in range(0, X.shape[0], chunk_size):
        jac = jac_fn(params, X[i:i + chunk_size])  # dict name -> (b, c, *shape)
        b, c = next(iter(jac.values())).shape[:2]
        rows.append(torch.cat([v.reshape(b * c, -1) for v in jac.values()], dim=1).detach())
    return torch.cat(rows)


def _generic_ntk(model: nn.Module, X: Tensor, kind: str, chunk_size: int,
                 memory_budget: float) -> Tensor:
    n = X.shape[0]
    p = sum(v.numel() for v in _trainable(model).values())
    with torch.no_grad():
        c = model(X[:1]).reshape(1, -1).shape[1]
    itemsize = X.element_size()
    if n * c * p * itemsize <= memory_budget:
        J = per_sample_jacobian(model, X, chunk_size=chunk_size)
        K = gram(J)
    else:  # recompute Jacobian chunks instead of storing J
        K = torch.empty(n * c, n * c, dtype=X.dtype, device=X.device)
        starts = list(range(0, n, chunk_size))
        for a in starts:
            Ja = per_sample_jacobian(model, X[a:a + chunk_size], chunk_size=chunk_size)
            for b in starts:
                if b < a:
                    continue
                Jb = Ja if b == a else per_sample_jacobian(
                    model, X[b:b + chunk_size], chunk_size=chunk_size)
                blk = Ja @ Jb.T
                K[a * c:a * c + blk.shape[0], b * c:b * c + blk.shape[1]] = blk
                K[b * c:b * c + blk.shape[1], a * c:a * c + blk.shape[0]] = blk.T
    if kind == "trace" and c > 1:
        K = K.view(n, c, n, c).diagonal(dim1=1, dim2=3).sum(-1)
    return K


# ---- public API -----------------------------------------------------------------------------
def empirical_ntk(
    model: nn.Module,
    X: Tensor,
    *,
    kind: str = "trace",
    method: str = "auto",
    chunk_size: int = 64,
    memory_budget: float = 2e9,
    check: bool = True,
    return_outputs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The empirical NTK ``K = J Jᵀ`` of ``model`` on inputs ``X`` (shape ``(n, ...)``).

    Args:
        kind: ``"trace"`` (``n × n``, ``Σ_j K_jj``) or ``"full"`` (``(n·c) × (n·c)``, row
            ``i*c + j`` is output ``j`` of sample ``i``). Identical for scalar outputs.
        method: ``"auto"`` (fast path when the model allows it), ``"fast"`` or ``"generic"``.
        chunk_size: samples per ``vmap(jacrev)`` chunk on the generic path.
        memory_budget: bytes the generic path may use to hold ``J`` at once.
        check: refuse models whose outputs mix samples (see :func:`check_per_sample`).
        return_outputs: also return the outputs ``f(X)`` of shape ``(n, c)`` (free on the fast
            path, which runs the forward pass anyway).

    Returns:
        ``K`` in the model's device and ``X``'s dtype (``X`` is moved to the model's device).
        Parameters with ``requires_grad=False`` are excluded.
    """
    if kind not in ("trace", "full"):
        raise NTKError(f"kind must be 'trace' or 'full', got {kind!r}")
    if method not in ("auto", "fast", "generic"):
        raise NTKError(f"method must be 'auto', 'fast' or 'generic', got {method!r}")
    if X.shape[0] == 0:
        raise NTKError("X has no samples")
    X = on_model_device(model, X)
    if check:
        check_per_sample(model, X)
    sink: list[Tensor] = []
    K = None
    if method in ("auto", "fast"):
        layers = _linear_layers(model)
        K = _fast_ntk(model, X, layers, kind, sink) if layers is not None else None
        if K is None and method == "fast":
            raise NTKError("the fast path needs every trainable parameter in a linear layer "
                           "applied once to 2-D inputs; use method='generic'")
    if K is None:
        K = _generic_ntk(model, X, kind, chunk_size, memory_budget)
    if not return_outputs:
        return K
    if not sink:
        with torch.no_grad():
            sink.append(model(X).reshape(X.shape[0], -1))
    return K, sink[0]


def on_model_device(model: nn.Module | Callable[[Tensor], Tensor], X: Tensor) -> Tensor:
    """``X`` on the device of ``model``'s parameters (a model trained on CUDA, data on CPU)."""
    p = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return X.to(p.device) if p is not None and p.device != X.device else X


def ntk_matvec(model: nn.Module, X: Tensor) -> Callable[[Tensor], Tensor]:
    """``v ↦ K v = J (Jᵀ v)`` for ``v`` of shape ``(n·c,)`` or ``(n·c, k)``, J never formed
    (one VJP and one JVP per vector, batched over columns with vmap)."""
    params = {k: v.detach() for k, v in _trainable(model).items()}
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


def block_krylov_top(
    matmul: Callable[[Tensor], Tensor],
    N: int,
    k: int,
    *,
    v0: Tensor | None = None,
    tol: float = 1e-8,
    block: int | None = None,
    max_blocks: int = 12,
    max_restarts: int = 100,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` eigenpairs of a symmetric positive semi-definite operator ``V ↦ K V``
    (``matmul`` maps ``(N, b)`` to ``(N, b)``) by restarted block Krylov (block Lanczos with full
    reorthogonalisation) and Rayleigh-Ritz.

    The search space starts from ``v0`` (previous eigenvectors, ``(N, k')``: the warm start of
    tracking during training), filled up to ``block`` (default ``k + 3``) columns with random
    vectors. After every block product the Ritz pairs of the whole basis are checked, with the
    residual norms read off the Krylov relation ``K Q = Q T + Q_next R Eᵀ`` (no extra product),
    and the solver stops as soon as every ``‖K u_i − θ_i u_i‖ <= tol · θ_i`` (``i <= k``; plus
    a floor of ``1000·eps·θ_1``). After ``max_blocks`` products it restarts from the top Ritz
    vectors. All arithmetic is in ``dtype`` (float64 by default), in torch (no second BLAS
    thread pool). Returns values descending ``(k,)`` and orthonormal vectors ``(N, k)``.
    """
    k = min(k, N)
    b = min(N, block or (k + 3))
    cap = min(N, b * (max_blocks + 1))
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(cols: int) -> Tensor:
        return torch.randn(N, cols, generator=gen, dtype=dtype).to(device)

    def orth(W: Tensor, Q: Tensor | None) -> Tensor:
        """Orthonormal columns spanning W, which the caller has made orthogonal to span(Q);
        directions lost to rank deficiency are replaced by random ones (orthogonal to Q)."""
        W, R = torch.linalg.qr(W)
        d = R.diagonal().abs()
        bad = d <= 1e-10 * d.max().clamp_min(1e-300)
        if bool(bad.any()):
            W = W.clone()
            W[:, bad] = rand(int(bad.sum()))
            for _ in range(2):
                if Q is not None:
                    W = W - Q @ (Q.T @ W)
                W, _ = torch.linalg.qr(W)
        return W

    def small_eigh(T: Tensor) -> tuple[Tensor, Tensor]:
        w, S = torch.linalg.eigh((T + T.T) / 2)
        return w.flip(0), S.flip(1)

    if cap < b + b or N <= 2 * b:  # tiny problem: the Krylov space is (nearly) everything
        Q = orth(rand(N), None)
        w, S = small_eigh(Q.T @ matmul(Q).to(dtype))
        return w[:k], Q @ S[:, :k]

    V = rand(b)
    if v0 is not None and v0.shape[0] == N:
        start = v0.detach().to(device=device, dtype=dtype).reshape(N, -1)[:, :b]
        if bool(torch.isfinite(start).all()):
            V[:, :start.shape[1]] = start
    V = orth(V, None)
    Qb = torch.empty(N, cap, dtype=dtype, device=device)
    T = torch.zeros(cap, cap, dtype=dtype, device=device)
    w = S = None
    m = 0
    for _ in range(max_restarts):
        Qb[:, :b] = V
        m = b
        W = matmul(V).to(dtype)
        while True:
            Q = Qb[:, :m]
            C = Q.T @ W  # T[:, last block] = Qᵀ K Q_last
            W = W - Q @ C
            C2 = Q.T @ W  # reorthogonalise
            W = W - Q @ C2
            C = C + C2
            T[:m, m - b:m] = C
            T[m - b:m, :m] = C.T
            Qn = orth(W, Q) if m + b <= cap else None
            j = m // b - 1
            if Qn is None or j < 4 or j % 2 == 0:  # the Rayleigh-Ritz check (skip every other
                w, S = small_eigh(T[:m, :m])       # one once the basis is large)
                if Qn is not None:
                    Rn = Qn.T @ W  # K Q_last = Q C + Qn Rn
                    res = (Rn @ S[m - b:m, :k]).norm(dim=0)
                else:
                    res = (W @ S[m - b:m, :k]).norm(dim=0)
                floor = 1e3 * torch.finfo(dtype).eps * w[0].abs()
                if bool((res <= tol * w[:k].abs() + floor).all()):
                    return w[:k], Q @ S[:, :k]
            if Qn is None:
                break
            Qb[:, m:m + b] = Qn
            m += b
            W = matmul(Qn).to(dtype)
        V = Qb[:, :m] @ S[:, :b]
    assert w is not None and S is not None
    return w[:k], Qb[:, :m] @ S[:, :k]


def eig_top(K: Tensor, k: int, *, v0: Tensor | None = None,
            tol: float | None = None) -> tuple[Tensor, Tensor]:
    """Top-``k`` eigenpairs of a dense symmetric positive semi-definite ``K``: values descending
    ``(k,)``, vectors ``(N, k)``, in ``K``'s dtype. Uses ``torch.linalg.eigh`` for small N or
    large k, else :func:`block_krylov_top` in float64 on ``K``, warm-started from ``v0``
    (previous eigenvectors). ``tol`` bounds the relative residual ``‖K u − θ u‖ / θ``; by default
    ``max(1e-10, 10·eps(K.dtype))``: 1.2e-6 for a float32 kernel (whose entries are only that
    accurate), 1e-10 for float64."""
    N = K.shape[0]
    k = min(k, N)
    if N <= 256 or k > N // 4:
        vals, vecs = torch.linalg.eigh(K)
        return vals.flip(0)[:k], vecs.flip(1)[:, :k]
    if tol is None:
        tol = max(1e-10, 10 * torch.finfo(K.dtype).eps)
    K64 = K.detach().to(torch.float64)
    vals, vecs = block_krylov_top(K64.__matmul__, N, k, v0=v0, tol=tol, device=K.device)
    return vals.to(K.dtype), vecs.to(K.dtype)


def top_eigenpairs(
    model: nn.Module,
    X: Tensor,
    k: int = 5,
    *,
    kind: str = "full",
    method: str = "auto",
    v0: Tensor | None = None,
    tol: float = 1e-8,
    max_dense: int = 6000,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` eigenvalues (``(k,)``, descending) and eigenvectors (``(N, k)``) of the NTK.

    Args:
        kind: ``"full"`` (default, ``N = n·c``) or ``"trace"`` (``N = n``).
        method: ``"dense"`` (form K, then eigh / Lanczos on it), ``"lanczos"`` (matrix-free:
            ``K v = J(Jᵀv)``, never forming K or J; full kernel only), or ``"auto"`` (dense up to
            ``max_dense`` rows).
        v0: previous eigenvectors ``(N, k')`` to warm-start the iterative solvers.
    """
    n = X.shape[0]
    if method == "auto":
        with torch.no_grad():
            c = model(X[:1]).reshape(1, -1).shape[1]
        N = n * c if kind == "full" else n
        method = "dense" if N <= max_dense else "lanczos"
    if method == "dense":
        return eig_top(empirical_ntk(model, X, kind=kind), k, v0=v0)
    if method != "lanczos":
        raise NTKError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}")
    if kind != "full":
        with torch.no_grad():
            if model(X[:1]).reshape(1, -1).shape[1] > 1:
                raise NTKError("the matrix-free solver works on the full kernel (kind='full')")
    check_per_sample(model, X)
    from scipy.sparse.linalg import LinearOperator, eigsh

    mv = ntk_matvec(model, X)
    with torch.no_grad():
        N = model(X).numel()
    dev, dt = X.device, X.dtype

    def apply(v: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(v)).to(device=dev, dtype=dt)
        return mv(t).to("cpu", torch.float64).numpy()

    op = LinearOperator((N, N), matvec=apply, matmat=apply, dtype=np.float64)
    start = None
    if v0 is not None and v0.shape[0] == N:
        start = v0.detach().to("cpu", torch.float64).reshape(N, -1).sum(1).numpy()
    vals, vecs = eigsh(op, k=min(k, N - 1), which="LA", v0=start, tol=tol)
    order = np.argsort(vals)[::-1].copy()
    return (torch.from_numpy(vals[order].copy()).to(device=dev, dtype=dt),
            torch.from_numpy(vecs[:, order].copy()).to(device=dev, dtype=dt))


def lambda_max(model: nn.Module, X: Tensor, *, kind: str = "full") -> float:
    """The largest eigenvalue of the NTK on ``X``."""
    vals, _ = top_eigenpairs(model, X, 1, kind=kind, method="dense")
    return float(vals[0])


def critical_lr(model: nn.Module, X: Tensor) -> float:
    """``η_crit = n·c / λ_max(K)`` (full kernel): the critical GD learning rate of the mean-MSE
    loss on ``X``, i.e. ``2 / λ_max`` of its Gauss-Newton Hessian. For a mini-batch ``X_B`` of
    size ``b`` this is ``η_crit(B) = b·c / λ_max(K_B)``. Exact for models linear in θ."""
    with torch.no_grad():
        nc = model(X).numel()
    return nc / lambda_max(model, X, kind="full")


def split_from_eigvecs(residual: Tensor, U: Tensor) -> tuple[float, float, float]:
    """``(L, L_top, L_rest)`` from a flattened residual ``r`` (``(n·c,)``) and orthonormal
    eigenvectors ``U`` (``(n·c, s)``): ``L = |r|²/(nc)``, ``L_top = |Uᵀr|²/(nc)``."""
    r = residual.reshape(-1)
    N = r.numel()
    L = float(r.pow(2).sum() / N)
    top = float((U.T @ r).pow(2).sum() / N)
    return L, top, L - top


def loss_split(model: nn.Module, X: Tensor, y: Tensor, k: int) -> tuple[float, float, float]:
    """``(L, L_top, L_rest)``: the mean-MSE loss on ``(X, y)`` and its parts inside and outside
    the span of the top-``k`` eigenvectors of the full NTK (SPEC.md section 1). ``L_top +
    L_rest = L`` exactly; ``L_rest >= 0``."""
    _, U = top_eigenpairs(model, X, k, kind="full", method="dense")
    with torch.no_grad():
        r = (model(X) - y.reshape(X.shape[0], -1)).reshape(-1)
    return split_from_eigvecs(r, U)
