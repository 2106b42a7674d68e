"""Symmetric Gram products, written once for the whole toolkit.

``A Aᵀ`` (the NTK of one layer, a Jacobian's kernel), sums of Hadamard products of Grams (the
layer-wise NTK formula) and ``Fᵀ F`` accumulated over chunks (the AGOP) are all symmetric. Each
routine computes only the blocks on and above the diagonal, about half the flops of a full
product, and then builds the lower triangle by copying, so the result is exactly symmetric
(``K == K.T`` bit for bit) on every CPU and BLAS: the diagonal blocks, which a matmul does not
return exactly symmetric, are mirrored from their upper triangle as well.
"""

from __future__ import annotations

import torch
from torch import Tensor


def default_block(n: int) -> int:
    """Rows per block of the upper-triangle products: small enough that the skipped lower
    triangle is most of the saving (k blocks cost (k+1)/(2k) of a full product), large enough for
    efficient matmuls; 256-384 measured fastest for n = 1000-4000 on a 2-core CPU."""
    return 256 if n <= 2048 else 384


def _mirror_square_(D: Tensor) -> Tensor:
    """Make the square block ``D`` exactly symmetric from its upper triangle, in place."""
    D.copy_(torch.triu(D) + torch.triu(D, 1).T)
    return D


def mirror_upper_(A: Tensor, block: int | None = None) -> Tensor:
    """Copy the upper triangle of the square ``A`` onto its lower triangle, in place, blockwise:
    ``A`` becomes exactly symmetric. Returns ``A``."""
    n = A.shape[0]
    block = block or default_block(n)
    for i in range(0, n, block):
        _mirror_square_(A[i:i + block, i:i + block])
        A[i + block:, i:i + block] = A[i:i + block, i + block:].T
    return A


def gram(A: Tensor, *, block: int | None = None) -> Tensor:
    """``A @ A.T`` for ``A`` of shape ``(n, m)``, computing only upper-triangular blocks.

    The rows are split into blocks of ``block`` rows; ``k(k+1)/2`` of the ``k²`` blocks are
    computed (one matmul per row of blocks) and mirrored, so the flops approach half of a plain
    matmul. For ``n <= block`` this is a single matmul. The result is exactly symmetric.
    """
    n = A.shape[0]
    if block is None:
        block = default_block(n)
    if n <= block:
        return _mirror_square_(A @ A.T)
    out = torch.empty(n, n, dtype=A.dtype, device=A.device)
    for i in range(0, n, block):
        Ai = A[i:i + block]
        row = Ai @ A[i:].T  # the whole row of blocks right of (and including) the diagonal
        _mirror_square_(row[:, :Ai.shape[0]])
        out[i:i + block, i:] = row
        if i + block < n:
            out[i + block:, i:i + block] = row[:, Ai.shape[0]:].T
    return out


def sum_of_gram_products(terms: list[tuple[Tensor, Tensor | None, float, float]], n: int,
                         dtype: torch.dtype, device: torch.device,
                         block: int | None = None) -> Tensor:
    """``Σ (H Hᵀ) ∘ (cw · F Fᵀ + cb)`` over ``terms = [(H, F, cw, cb)]`` (``cw · H Hᵀ`` where
    ``F`` is None), an exactly symmetric ``n × n`` matrix.

    Works one row of blocks at a time on the upper triangle (each factor's Gram block computed
    once, the products and sums done on the block while it is hot) and mirrors each block row
    once: about half the flops of full Gram matrices and a single pass of n² writes plus one
    transposed copy, instead of one per Gram."""
    if block is None:
        block = default_block(n)
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
        _mirror_square_(acc[:, :acc.shape[0]])
        K[r, i:] = acc
        if i + block < n:
            K[i + block:, r] = acc[:, block:].T
    return K


def syrk_upper_(A: Tensor, F: Tensor, block: int) -> Tensor:
    """``A += Fᵀ F`` on the upper-triangular ``block × block`` blocks of the square ``A`` only
    (``F`` is ``(m, d)``, ``A`` is ``(d, d)``). Call :func:`mirror_upper_` with the same
    ``block`` once the accumulation is done. Returns ``A``."""
    d = A.shape[0]
    for i in range(0, d, block):
        A[i:i + block, i:].addmm_(F[:, i:i + block].T, F[:, i:])
    return A


def add_gram_products_upper_(K: Tensor, terms: list[tuple[Tensor, Tensor | None, float, float]],
                             block: int | None = None) -> Tensor:
    """``K += Σ (H Hᵀ) ∘ (cw · F Fᵀ + cb)`` over ``terms = [(H, F, cw, cb)]`` (``cw · H Hᵀ``
    where ``F`` is None; ``H`` and ``F`` have ``n`` rows, ``K`` is ``n × n``), on the blocks
    on and above the diagonal only: call :func:`mirror_upper_` once the accumulation is done.
    Returns ``K``.

    One row of blocks at a time: each factor's Gram block is one product (``cw`` inside it)
    into a reused buffer, and the Hadamard product is accumulated into ``K`` in the same pass
    (``addcmul_``); a term without ``F`` is one ``addmm_`` straight into ``K``. No ``n × n``
    temporaries and no mirroring per call, unlike :func:`sum_of_gram_products`."""
    n = K.shape[0]
    block = block or default_block(n)
    width = min(block, n) * n
    P = Q = None
    for i in range(0, n, block):
        r = slice(i, i + block)
        Kr = K[r, i:]
        shape = Kr.shape
        for H, F, cw, cb in terms:
            if F is None:
                Kr.addmm_(H[r], H[i:].T, alpha=cw)
                continue
            if P is None:
                P = K.new_empty(width)
                Q = K.new_empty(width)
            Pb = torch.mm(F[r], F[i:].T, out=P[:shape.numel()].view(shape))
            Qb = torch.mm(H[r], H[i:].T, out=Q[:shape.numel()].view(shape))
            Kr.addcmul_(Qb, Pb, value=cw)
            if cb != 0.0:
                Kr.add_(Qb, alpha=cb)
    return K
