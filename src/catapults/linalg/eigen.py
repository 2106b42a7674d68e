"""Top-k eigenpairs of symmetric positive semi-definite matrices and operators.

:func:`eig_top` takes a dense matrix (``torch.linalg.eigh`` when small, else block Krylov);
:func:`block_krylov_top` takes any operator ``V ↦ K V`` on blocks of vectors, so a kernel that is
never formed (``K V = J (Jᵀ V)``) is solved the same way, warm-started from earlier eigenvectors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


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

    One function on purpose: the basis, the projected matrix ``T`` and the restart state are
    shared by every phase of the iteration, and splitting it would pass them all around.
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
