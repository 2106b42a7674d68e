"""Symmetric Gram products, written once for the whole toolkit.

``A Aᵀ`` (the NTK of one layer, a Jacobian's kernel), sums of Hadamard products of Grams (the
layer-wise NTK formula) and ``Fᵀ F`` accumulated over chunks (the AGOP) are all symmetric. Each
routine computes only the entries on and above the diagonal, plus the lower halves of small
squares on it, and then builds the lower triangle by copying, so the result is exactly
symmetric (``K == K.T`` bit for bit) on every CPU and BLAS: the diagonal squares, which a
matmul does not return exactly symmetric, are mirrored from their upper triangle as well.

The upper triangle is cut into rectangles by halving (:func:`upper_tiles`, the order of a
recursive ``syrk``): the square ``[lo, hi)²`` is the rectangle ``[lo, mid) × [mid, hi)`` plus
the squares ``[lo, mid)²`` and ``[mid, hi)²``, down to squares of at most ``leaf`` rows, which
are computed whole. That costs ``n²/2 + n·leaf/2`` products of rows instead of the
``n²/2 + n·block/2`` of rows of ``block``-row strips, with most of the work in large
rectangles. ``benchmarks/bench_gram.py`` (2-core AMD EPYC, 2 threads, 2026-12-04, side by
side; docs/benchmarks.md): the Gram stage of the layer-wise MLP kernel ran at 1.41x / 1.23x /
1.10x its FLOP floor at n = 1000 / 2000 / 4000 with leaves of 128 rows, against 1.50x / 1.42x /
1.27x with the strips of 256-384 rows used before; the Gram of a Jacobian of 38,785 columns at
1.30x / 1.35x (n = 256 / 1000) against 1.41x / 1.40x.
"""

from __future__ import annotations

import torch
from torch import Tensor

LEAF = 128
"""Rows of the largest square on the diagonal computed whole (the default ``block``): smaller
squares waste fewer products but run at a lower rate (on 2 threads, ``(s, 1024) × (1024, s)``
products ran at 130 / 168 / 194 GFLOP/s for s = 64 / 128 / 256). In ``bench_gram.py`` leaves of
64, 128 and 256 rows were within 3% of each other on the MLP's Gram stage; on a Jacobian's Gram
256 rows were 2-9% slower than 128, 64 rows the same."""

STRIP = 512
"""Most rows of one off-diagonal rectangle: bounds the scratch of
:func:`add_gram_products_upper_` at two buffers of ``STRIP · n / 2`` entries (no more than the
strips of 256-384 rows took before; strips of 512 and 1024 rows and unbounded rectangles
measured within noise of each other at n = 1000-4000)."""

_ALIGN = 32


def _split(lo: int, hi: int) -> int:
    """Where ``[lo, hi)`` is halved: the half rounded up to a multiple of 32 rows (aligned
    products), or the plain half when that would leave nothing on the right."""
    half = (hi - lo + 1) // 2
    aligned = -(-half // _ALIGN) * _ALIGN
    return lo + (aligned if aligned < hi - lo else half)


def _rows(value: int | None, default: int, name: str) -> int:
    """A number of rows: ``default`` for None or 0, else a positive integer (ValueError)."""
    if not value:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive number of rows, got {value!r}")
    return value


def upper_tiles(n: int, *, leaf: int | None = None,
                strip: int | None = None) -> list[tuple[int, int, int, int]]:
    """Disjoint rectangles ``(r0, r1, c0, c1)`` (rows ``r0:r1``, columns ``c0:c1``) that cover
    every entry ``(i, j)`` with ``i <= j`` of an ``n × n`` matrix, and nothing else but the
    lower halves of the squares on the diagonal (``r0 == c0``, at most ``leaf`` rows each,
    default :data:`LEAF`). Off-diagonal rectangles have at most ``strip`` rows (default
    :data:`STRIP`). See the module docstring."""
    leaf = _rows(leaf, LEAF, "block")
    strip = _rows(strip, STRIP, "strip")
    tiles: list[tuple[int, int, int, int]] = []
    todo = [(0, n)] if n > 0 else []
    while todo:
        lo, hi = todo.pop()
        if hi - lo <= leaf:
            tiles.append((lo, hi, lo, hi))
            continue
        mid = _split(lo, hi)
        tiles.extend((a, min(a + strip, mid), mid, hi) for a in range(lo, mid, strip))
        todo += [(mid, hi), (lo, mid)]
    return tiles


def _mirror_square_(D: Tensor) -> Tensor:
    """Make the square block ``D`` exactly symmetric from its upper triangle, in place."""
    D.copy_(torch.triu(D) + torch.triu(D, 1).T)
    return D


def mirror_upper_(A: Tensor, block: int | None = None) -> Tensor:
    """Copy the upper triangle of the square ``A`` onto its lower triangle, in place, in
    squares of ``block`` rows (any size: only the upper triangle is read): ``A`` becomes exactly
    symmetric. Returns ``A``."""
    n = A.shape[0]
    block = _rows(block, 256, "block")
    for i in range(0, n, block):
        _mirror_square_(A[i:i + block, i:i + block])
        A[i + block:, i:i + block] = A[i:i + block, i + block:].T
    return A


def gram(A: Tensor, *, block: int | None = None) -> Tensor:
    """``A @ A.T`` for ``A`` of shape ``(n, m)``, exactly symmetric, computing the rectangles of
    :func:`upper_tiles` (squares of at most ``block`` rows on the diagonal) and mirroring: about
    half the flops of a plain matmul. For ``n <= block`` this is a single matmul. Works under
    autograd and, for ``n <= block``, under ``vmap`` and forward-mode AD (each rectangle is
    computed, then copied in: one pass over ``n²/2`` entries, which ``mm(out=...)`` would save
    but no ``torch.func`` transform supports)."""
    n = A.shape[0]
    tiles = upper_tiles(n, leaf=block)
    if len(tiles) <= 1:
        return _mirror_square_(A @ A.T)
    out = A.new_empty(n, n)
    for r0, r1, c0, c1 in tiles:
        out[r0:r1, c0:c1] = A[r0:r1] @ A[c0:c1].T
    return mirror_upper_(out)


def syrk_upper_(A: Tensor, F: Tensor, block: int | None = None) -> Tensor:
    """``A += Fᵀ F`` on the rectangles of :func:`upper_tiles` of the square ``A`` only (``F`` is
    ``(m, d)``, ``A`` is ``(d, d)``; squares of at most ``block`` rows on the diagonal). Call
    :func:`mirror_upper_` once the accumulation is done. Returns ``A``."""
    for r0, r1, c0, c1 in upper_tiles(A.shape[0], leaf=block):
        A[r0:r1, c0:c1].addmm_(F[:, r0:r1].T, F[:, c0:c1])
    return A


def add_gram_products_upper_(K: Tensor, terms: list[tuple[Tensor, Tensor | None, float, float]],
                             block: int | None = None) -> Tensor:
    """``K += Σ (H Hᵀ) ∘ (cw · F Fᵀ + cb)`` over ``terms = [(H, F, cw, cb)]`` (``cw · H Hᵀ``
    where ``F`` is None; ``H`` and ``F`` have ``n`` rows, ``K`` is ``n × n``), on the
    rectangles of :func:`upper_tiles` only (squares of at most ``block`` rows on the diagonal):
    call :func:`mirror_upper_` once the accumulation is done. Returns ``K``.

    One rectangle at a time: each factor's Gram block is one product into a reused buffer,
    and the Hadamard product is accumulated into ``K`` in the same pass (``addcmul_``, ``cw``
    inside it); a term without ``F`` is one ``addmm_`` straight into ``K``. No ``n × n``
    temporaries."""
    tiles = upper_tiles(K.shape[0], leaf=block)
    P = Q = None
    for r0, r1, c0, c1 in tiles:
        Kr = K[r0:r1, c0:c1]
        shape = Kr.shape
        for H, F, cw, cb in terms:
            if F is None:
                Kr.addmm_(H[r0:r1], H[c0:c1].T, alpha=cw)
                continue
            if P is None:
                size = max((b - a) * (d - c) for a, b, c, d in tiles)
                P, Q = K.new_empty(size), K.new_empty(size)
            Pb = torch.mm(F[r0:r1], F[c0:c1].T, out=P[:shape.numel()].view(shape))
            Qb = torch.mm(H[r0:r1], H[c0:c1].T, out=Q[:shape.numel()].view(shape))
            Kr.addcmul_(Qb, Pb, value=cw)
            if cb != 0.0:
                Kr.add_(Qb, alpha=cb)
    return K


def sum_of_gram_products(terms: list[tuple[Tensor, Tensor | None, float, float]], n: int,
                         dtype: torch.dtype, device: torch.device,
                         block: int | None = None) -> Tensor:
    """``Σ (H Hᵀ) ∘ (cw · F Fᵀ + cb)`` over ``terms = [(H, F, cw, cb)]`` (``cw · H Hᵀ`` where
    ``F`` is None), an exactly symmetric ``n × n`` matrix (:func:`add_gram_products_upper_`
    on zeros, then mirrored)."""
    K = torch.zeros(n, n, dtype=dtype, device=device)
    return mirror_upper_(add_gram_products_upper_(K, terms, block))
