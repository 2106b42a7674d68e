"""Top-k eigenpairs of symmetric positive semi-definite matrices and operators.

:func:`eig_top` takes a dense matrix (``torch.linalg.eigh`` when small, else block Krylov);
:func:`block_krylov_top` takes any operator ``V ↦ K V`` on blocks of vectors, so a kernel that is
never formed (``K V = J (Jᵀ V)``) is solved the same way, warm-started from earlier eigenvectors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from catapults.errors import KernelError


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KernelError(f"block_krylov_top: {name} must be an integer >= 1, got {value!r}")


def blocks_for(vectors: int, block: int) -> int:
    """``max_blocks`` for :func:`block_krylov_top` that keeps a basis of about ``vectors``
    vectors with ``block`` vectors per product (at least 2 blocks); a bad ``block`` gets the
    solver's message."""
    _check_positive("block", block)
    return max(2, vectors // block)


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
    keep: int | None = None,
    floor: float = 0.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` eigenpairs of a symmetric operator ``V ↦ K V`` (``matmul`` maps ``(N, b)`` to
    ``(N, b)``) by thick-restarted block Lanczos with full reorthogonalisation and
    Rayleigh-Ritz; the top is algebraic (largest values first), so ``K`` may be indefinite.

    The search space starts from ``v0`` (previous eigenvectors, ``(N, k')``: the warm start of
    tracking during training; beyond ``block`` columns the last start vector is their sum), filled
    up to ``block`` (default ``k + 3``) columns with random vectors. After every block product the
    Ritz pairs of the whole basis are checked, with the residual norms read off the Krylov relation
    ``K Q = Q T + Q_next R Eᵀ`` (no extra product), and the solver stops as soon as every
    ``‖K u_i − θ_i u_i‖ <= tol·|θ_i| + floor·√|θ_1 θ_i| + 1000·eps(dtype)·|θ_1|`` (``i <= k``).
    The last term is the arithmetic's limit; ``floor`` (default 0) is the operator's: products in
    float32 carry errors of about ``eps32·‖J‖·‖Jᵀu‖ = eps32·√(θ_1 θ_i)`` for a kernel
    ``J Jᵀ`` (pass ``10·eps(float32)``), so a tight ``tol`` on a small eigenvalue stays reachable.
    When the basis holds ``max_blocks + 1`` blocks it is thick-restarted: the top ``keep`` Ritz
    vectors (default: half the basis, at least ``k``) stay, with their Krylov relation, and the
    iteration goes on from the current next block, so no product is repeated.

    The basis is stored transposed (one contiguous row per vector): the projections are then
    row-streaming products, which matters when ``N`` is large (a Hessian over millions of
    parameters). Each step projects first on the blocks the new one couples to in exact arithmetic
    (the previous and the last block, or every kept Ritz vector right after a restart), then once
    on the whole basis, and a second time only when that pass cancelled more than ``1 − 1/√2`` of
    a vector's norm (the DGKS criterion): two reads of the basis per step instead of four. After
    ``max_restarts`` restarts the current Ritz pairs are returned as they are. All arithmetic is
    in ``dtype`` (float64 by default), in torch. Returns values descending ``(k,)`` and
    orthonormal vectors ``(N, k)``.

    One function on purpose: the basis, the projected matrix ``T`` and the restart state are
    shared by every phase of the iteration, and splitting it would pass them all around.
    """
    for name, value in (("k", k), ("block", block), ("max_blocks", max_blocks),
                        ("max_restarts", max_restarts), ("keep", keep)):
        if value is not None:
            _check_positive(name, value)
    if not (tol >= 0 and floor >= 0):
        raise KernelError(f"block_krylov_top: tol and floor must be >= 0, got {tol!r}, {floor!r}")
    k = min(k, N)
    b = min(N, block or (k + 3))
    cap = max(b * (max_blocks + 1), k + 2 * b)
    arith = 1e3 * torch.finfo(dtype).eps
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(rows: int) -> Tensor:
        return torch.randn(rows, N, generator=gen, dtype=dtype).to(device)

    def orth(Wt: Tensor, Qt: Tensor | None, scale: float) -> Tensor:
        """Orthonormal rows spanning the rows of Wt, which the caller has made orthogonal to
        the rows of Qt; ``scale`` is the norm the rows had before that projection. Directions
        lost to cancellation (below ``1e-12·scale``) are replaced by random ones, and rows that
        lost most of their norm are projected once more after normalisation, where the
        rounding left by the projection (``eps·scale``) would otherwise be magnified."""
        Q, R = torch.linalg.qr(Wt.T)
        d = R.diagonal().abs()
        bad = d <= 1e-12 * max(scale, float(d.max()))
        if bool(bad.any()):
            Q = Q.clone()
            Q[:, bad] = rand(int(bad.sum())).T
        if bool(bad.any()) or (Qt is not None and float(d.min()) < 1e-4 * scale):
            for _ in range(2):
                if Qt is not None:
                    Q = Q - Qt.T @ (Qt @ Q)
                Q, _ = torch.linalg.qr(Q)
        return Q.T.contiguous()

    def small_eigh(T: Tensor) -> tuple[Tensor, Tensor]:
        w, S = torch.linalg.eigh((T + T.T) / 2)
        return w.flip(0), S.flip(1)

    def product(Vt: Tensor) -> Tensor:
        return matmul(Vt.T).to(dtype).T.contiguous()

    if N < cap + b:  # small problem: the basis could fill the whole space, so take all of it
        Qt = orth(rand(N), None, 0.0)
        w, S = small_eigh(Qt @ product(Qt).T)
        return w[:k], (S[:, :k].T @ Qt).T

    keep = max(k, min(cap - 2 * b, keep if keep is not None else (cap - b) // 2))
    Vt = rand(b)
    if v0 is not None and v0.shape[0] == N:
        start = v0.detach().to(device=device, dtype=dtype).reshape(N, -1)
        if start.shape[1] > b:  # more previous vectors than a block: the last column sums the rest
            start = torch.cat([start[:, :b - 1], start[:, b - 1:].sum(1, keepdim=True)], 1)
        if bool(torch.isfinite(start).all()):
            Vt[:start.shape[1]] = start.T
    Qt = torch.empty(cap, N, dtype=dtype, device=device)
    Qt[:b] = orth(Vt, None, 0.0)
    T = torch.zeros(cap, cap, dtype=dtype, device=device)
    m = b
    Wt = product(Qt[:b])
    last = max_restarts * (max_blocks + 1) - 1
    lo = 0  # rows of the basis that K Q_last couples to in exact arithmetic
    for it in range(last + 1):
        Q = Qt[:m]
        before = Wt.norm(dim=1)
        C = torch.zeros(b, m, dtype=dtype, device=device)  # the last block's column of T
        if lo > 0:  # the block three-term recurrence first (cheap), then one full pass
            L = Qt[lo:m]
            C_loc = Wt @ L.T
            Wt -= C_loc @ L
            C[:, lo:] = C_loc
        for _ in range(2):  # full projections, the second only by the DGKS criterion
            mid = Wt.norm(dim=1)
            C2 = Wt @ Q.T
            Wt -= C2 @ Q
            C += C2
            if not bool((Wt.norm(dim=1) < 0.7071 * mid).any()):
                break
        T[:m, m - b:m] = C.T
        T[m - b:m, :m] = C
        Qn = orth(Wt, Q, float(before.max()))
        Rn = Wt @ Qn.T  # K Q_last = Q C + Qnᵀ Rnᵀ (rows)
        w, S = small_eigh(T[:m, :m])
        res = (Rn.T @ S[m - b:m, :k]).norm(dim=0)
        a = w[:k].abs()
        bound = tol * a + floor * (a * w[0].abs()).sqrt() + arith * w[0].abs()
        if it == last or bool((res <= bound).all()):
            return w[:k], (S[:, :k].T @ Q).T
        if m + b > cap:  # thick restart: the top Ritz vectors and their Krylov relation
            U = S[:, :keep].T @ Q
            Qt[:keep] = U
            T.zero_()
            T[:keep, :keep] = torch.diag(w[:keep])
            m = keep
            lo = 0  # the next block couples to every kept Ritz vector
        else:
            lo = m - b
        Qt[m:m + b] = Qn
        m += b
        Wt = product(Qn)
    raise AssertionError("unreachable: the last iteration returns")


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
