"""The average gradient outer product (AGOP) of a predictor and AGOP alignment
(docs/conventions.md).

Definitions (docs/conventions.md, followed exactly by the defaults):

- ``G(f, X) = (1/n) Σ_i Σ_j ∇_x f_j(x_i) ∇_x f_j(x_i)ᵀ`` for inputs ``X`` of shape ``(n, ...)``,
  a ``d × d`` matrix with ``d`` the flattened per-sample size; uncentred, no square root. A
  multi-output ``f`` sums over its ``c`` outputs.
- ``ρ(A, B) = ⟨A, B⟩_F / (‖A‖_F ‖B‖_F)``, the cosine of the flattened matrices.

Two variants used elsewhere in the literature are options of :func:`alignment` (never defaults):

- ``centered=True``: the Pearson correlation of the entries, i.e. the cosine after subtracting
  each matrix's mean entry, ``A - mean(A)·11ᵀ`` (as in the neural-feature-ansatz literature).
- ``sqrt=True``: compare the PSD square roots ``A^{1/2}``, ``B^{1/2}`` (symmetrised first,
  negative eigenvalues clamped to 0). With both options the square root is taken first.

How it is computed. ``f`` may be an ``nn.Module`` or any callable mapping ``(n, ...)`` to ``(n,)``
or ``(n, c)``. Because output ``i`` depends on sample ``i`` only, the per-sample input gradients
of all samples are the gradient of ``Σ_i f_j(x_i)`` with respect to ``X``: one backward pass per
output ``j`` (no Python loop over samples), over chunks of ``chunk_size`` samples so memory stays
bounded. Functions whose outputs mix samples (BatchNorm in training mode, ...) are refused with
:class:`AGOPError`, since this identity (and the per-sample AGOP) then fails.

The AGOP is ``G = Fᵀ F / n`` with ``F`` the ``(n·c) × d`` matrix of gradients. :func:`agop` streams
chunks and accumulates ``Fᵀ F`` (upper-triangular blocks only, then mirrored). When ``n·c < d``
the ``d × d`` matrix need not be formed at all: :class:`FactoredAGOP` keeps ``F`` and
:func:`alignment` uses Gram identities such as
``⟨F_aᵀF_a/n_a, F_bᵀF_b/n_b⟩_F = ‖F_a F_bᵀ‖_F² / (n_a n_b)`` (cost ``r_a r_b d`` instead of
``(r_a + r_b) d²/2``). :func:`agop_alignment` picks the form with fewer flops: Gram matrices
when both AGOPs are factored with small rank (a reference run's AGOP on real data) or for the
square-root variant (a thin SVD instead of a ``d × d`` eigendecomposition); against a dense
reference (the exact AGOP of a synthetic target) forming ``G`` is cheaper than the quadratic
forms ``Σ_i f_iᵀ B f_i``, so it is formed. ``method="factored"`` forces the Gram path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from catapults.curvature.checks import check_per_sample as _check_per_sample
from catapults.curvature.checks import on_model_device
from catapults.curvature.precision import full_float32
from catapults.errors import AGOPError
from catapults.linalg.gram import gram, mirror_upper_, syrk_upper_

__all__ = [
    "AGOPError",
    "FactoredAGOP",
    "Matrix",
    "agop",
    "agop_alignment",
    "agop_factor",
    "agop_for_alignment",
    "alignment",
    "check_per_sample",
    "input_gradients",
    "matrix_sqrt",
    "psd_sqrt",
]

DEFAULT_CHUNK = 4096

Predictor = nn.Module | Callable[[Tensor], Tensor]


# ---- checks ---------------------------------------------------------------------------------
def check_per_sample(f: Predictor, X: Tensor, *, probe: int = 4) -> None:
    """Refuse predictors whose output for one sample depends on the other samples of the batch
    (BatchNorm in training mode, dropout, functions that mix samples), raising
    :class:`AGOPError`. The logic is :func:`catapults.curvature.checks.check_per_sample`'s."""
    _check_per_sample(f, X, probe=probe, quantity="the per-sample input gradient (and the AGOP)",
           error=AGOPError)


# ---- per-sample input gradients ---------------------------------------------------------------
def _chunk_gradients(f: Predictor, x: Tensor) -> Tensor:
    """``(m, c, d)`` per-sample input gradients of one chunk: one backward pass per output."""
    m = x.shape[0]
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = f(x)
        if not isinstance(out, Tensor) or out.shape[0] != m:
            raise AGOPError(f"f must map inputs (n, ...) to outputs (n,) or (n, c); got "
                            f"{tuple(out.shape) if isinstance(out, Tensor) else type(out)} "
                            f"for n = {m}")
        out = out.reshape(m, -1)
        c = out.shape[1]
        if not out.requires_grad:  # f does not depend on its input (a constant, say)
            return torch.zeros(m, c, x[0].numel(), dtype=x.dtype, device=x.device)
        grads = []
        for j in range(c):
            (g,) = torch.autograd.grad(out[:, j].sum(), x, retain_graph=j < c - 1,
                                       allow_unused=True)
            grads.append(torch.zeros_like(x) if g is None else g)
    if c == 1:
        return grads[0].reshape(m, 1, -1).detach()
    return torch.stack([g.reshape(m, -1) for g in grads], dim=1).detach()


def _chunks(X: Tensor, chunk_size: int | None):
    n = X.shape[0]
    step = n if chunk_size is None else max(1, int(chunk_size))
    for i in range(0, n, step):
        yield X[i:i + step]


def _prepare(f: Predictor, X: Tensor, check: bool) -> None:
    if X.dim() < 1 or X.shape[0] == 0:
        raise AGOPError("X has no samples")
    if not X.is_floating_point():
        raise AGOPError(f"X must be floating point, got {X.dtype}")
    if check:
        check_per_sample(f, X)


@full_float32()
def input_gradients(f: Predictor, X: Tensor, *, chunk_size: int | None = DEFAULT_CHUNK,
                    check: bool = True) -> Tensor:
    """Per-sample input gradients ``∇_x f_j(x_i)`` as a tensor of shape ``(n, c, d)``.

    One forward and ``c`` backward passes per chunk of ``chunk_size`` samples (``None``: all at
    once). Parameters' ``.grad`` are not touched. ``check`` refuses batch-mixing predictors.
    """
    X = on_model_device(f, X)
    _prepare(f, X, check)
    return torch.cat([_chunk_gradients(f, x) for x in _chunks(X, chunk_size)])


# ---- dense AGOP -----------------------------------------------------------------------------
@full_float32()
def agop(f: Predictor, X: Tensor, *, chunk_size: int | None = DEFAULT_CHUNK,
         check: bool = True, block: int = 512) -> Tensor:
    """The AGOP ``G(f, X) = (1/n) Σ_i Σ_j ∇_x f_j(x_i) ∇_x f_j(x_i)ᵀ`` (docs/conventions.md).

    Args:
        f: an ``nn.Module`` or any callable mapping ``(n, ...)`` to ``(n,)`` or ``(n, c)``
            (a synthetic :class:`~catapults.targets.Target`, for example).
        X: inputs ``(n, ...)``; ``d`` is the flattened per-sample size.
        chunk_size: samples per forward/backward pass (``None``: all at once). Memory is
            ``O(chunk_size · (activations + c·d) + d²)``.
        check: refuse predictors whose outputs mix samples (:class:`AGOPError`).
        block: rows of the largest square on the diagonal multiplied whole in the symmetric
            accumulation (the rest of the upper triangle in rectangles, then mirrored:
            :func:`catapults.linalg.gram.upper_tiles`); a positive integer.

    Returns:
        ``(d, d)`` symmetric tensor in ``X``'s dtype and device.
    """
    X = on_model_device(f, X)
    _prepare(f, X, check)
    n = X.shape[0]
    d = int(X[0].numel())
    A = torch.zeros(d, d, dtype=X.dtype, device=X.device)
    for x in _chunks(X, chunk_size):
        F = _chunk_gradients(f, x)
        syrk_upper_(A, F.reshape(-1, d), block)
    mirror_upper_(A, block)
    return A.div_(n)


# ---- factored AGOP --------------------------------------------------------------------------
@dataclass(frozen=True)
class FactoredAGOP:
    """A PSD ``d × d`` matrix kept in factored form ``M = Fᵀ diag(w) F``.

    ``F`` is ``(r, d)`` and ``w`` is ``(r,)`` with ``w >= 0``. The AGOP of ``n`` samples with ``c``
    outputs is ``F`` = the ``(n·c, d)`` gradient matrix and ``w = 1/n``
    (:meth:`from_gradients`, :func:`agop_factor`). :meth:`sqrt` returns ``M^{1/2}`` in the
    same form (``F`` orthonormal rows). :func:`alignment` accepts it wherever it accepts a
    tensor and works on ``r × r`` Gram matrices when ``r < d``; :meth:`matrix` forms ``M``.
    """

    F: Tensor
    w: Tensor

    @classmethod
    def from_gradients(cls, grads: Tensor, n: int | None = None) -> FactoredAGOP:
        """From per-sample gradients ``(n, c, d)`` or ``(n, d)``; ``n`` defaults to
        ``grads.shape[0]`` (the number of samples)."""
        n = grads.shape[0] if n is None else n
        F = grads.reshape(-1, grads.shape[-1]) if grads.dim() == 3 else grads
        if F.dim() != 2:
            raise AGOPError(f"gradients must be (n, d) or (n, c, d), got {tuple(grads.shape)}")
        return cls(F, torch.full((F.shape[0],), 1.0 / n, dtype=F.dtype, device=F.device))

    @property
    def d(self) -> int:
        return int(self.F.shape[1])

    @property
    def rank(self) -> int:
        """Number of factor rows ``r`` (an upper bound on the rank)."""
        return int(self.F.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d, self.d)

    @property
    def dtype(self) -> torch.dtype:
        return self.F.dtype

    @property
    def device(self) -> torch.device:
        return self.F.device

    def to(self, *args, **kwargs) -> FactoredAGOP:
        return FactoredAGOP(self.F.to(*args, **kwargs), self.w.to(*args, **kwargs))

    @full_float32()
    def matrix(self, *, block: int = 512) -> Tensor:
        """The dense ``d × d`` matrix ``Fᵀ diag(w) F``."""
        A = torch.zeros(self.d, self.d, dtype=self.F.dtype, device=self.F.device)
        syrk_upper_(A, self.F * self.w.sqrt()[:, None], block)
        mirror_upper_(A, block)
        return A

    def trace(self) -> float:
        return float((self.F.double().pow(2).sum(1) * self.w.double()).sum())

    def _scaled(self) -> Tensor:
        return self.F * self.w.sqrt()[:, None]

    @full_float32()
    def sqrt(self) -> FactoredAGOP:
        """``M^{1/2}`` as ``Vᵀ diag(s) V`` from the thin SVD of ``diag(√w) F = U diag(s) Vᵀ``
        (cost ``r² d``)."""
        _, s, Vh = torch.linalg.svd(self._scaled(), full_matrices=False)
        return FactoredAGOP(Vh, s)

    @full_float32()
    def eigenvalues(self, k: int | None = None) -> Tensor:
        """The top ``k`` (all ``min(r, d)`` by default) eigenvalues, descending, from the
        ``r × r`` Gram matrix when ``r < d``, else from the dense matrix."""
        if self.rank < self.d:
            B = self._scaled()
            vals = torch.linalg.eigvalsh(gram(B).double())
        else:
            vals = torch.linalg.eigvalsh(self.matrix().double())
        vals = vals.flip(0).clamp_min(0)
        return (vals if k is None else vals[:k]).to(self.F.dtype)


@full_float32()
def agop_factor(f: Predictor, X: Tensor, *, chunk_size: int | None = DEFAULT_CHUNK,
                check: bool = True) -> FactoredAGOP:
    """``G(f, X)`` in factored form (:class:`FactoredAGOP`): the ``(n·c, d)`` gradient matrix and
    the weight ``1/n``. Memory ``n·c·d``; the ``d × d`` matrix is never formed."""
    return FactoredAGOP.from_gradients(input_gradients(f, X, chunk_size=chunk_size, check=check),
                                       X.shape[0])


# ---- alignment ------------------------------------------------------------------------------
Matrix = Tensor | FactoredAGOP


def psd_sqrt(A: Tensor) -> Tensor:
    """The PSD square root of the symmetric part of ``A`` (eigh in float64), in ``A``'s dtype.

    Eigenvalues below ``d·eps·λ_max`` (rounding noise, float64 ``eps``) count as 0, so that a
    low-rank matrix keeps its exact null space (the square root would turn ``1e-16`` noise into
    ``1e-8`` entries)."""
    S = (A.double() + A.double().T) / 2
    vals, vecs = torch.linalg.eigh(S)
    tol = A.shape[0] * torch.finfo(torch.float64).eps * vals.abs().max().clamp_min(1e-300)
    vals = torch.where(vals > tol, vals, torch.zeros_like(vals))
    return ((vecs * vals.sqrt()) @ vecs.T).to(A.dtype)


def _inner(a: Matrix, b: Matrix) -> float:
    """``⟨a, b⟩_F`` for dense or factored operands, without forming factored ones."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        dt = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dt), b.to(dt)
        if dt == torch.float64:
            return float(a.reshape(-1) @ b.reshape(-1))
        # row-wise dot products in the working dtype, summed in float64 (no float64 copies)
        return float(torch.einsum("ij,ij->i", a, b).double().sum())
    if isinstance(a, Tensor):
        a, b = b, a
    if isinstance(b, Tensor):  # Σ_i w_i f_iᵀ B f_i
        dt = torch.promote_types(a.F.dtype, b.dtype)
        F = a.F.to(dt)
        quad = ((F @ b.to(dt)) * F).sum(1)
        return float(quad.double() @ a.w.double())
    if a is b:
        C = gram(a.F).double()
        return float(a.w.double() @ C.pow(2) @ a.w.double())
    dt = torch.promote_types(a.F.dtype, b.F.dtype)
    C = (a.F.to(dt) @ b.F.to(dt).T).double()  # Σ_ij w_i v_j (f_i·g_j)²
    return float(a.w.double() @ C.pow(2) @ b.w.double())


def _entry_sum(a: Matrix) -> float:
    if isinstance(a, Tensor):
        return float(a.sum(dtype=torch.float64))
    return float(a.F.double().sum(1).pow(2) @ a.w.double())


def _check_square(A: Matrix, name: str) -> None:
    if isinstance(A, FactoredAGOP):
        return
    if not isinstance(A, Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise AGOPError(f"{name} must be a square matrix or a FactoredAGOP, got "
                        f"{tuple(A.shape) if isinstance(A, Tensor) else type(A).__name__}")


def _low_rank(M: Matrix | None) -> int | None:
    """The factor rank of ``M`` when it is a FactoredAGOP with ``r < d``, else None."""
    return M.rank if isinstance(M, FactoredAGOP) and M.rank < M.d else None


def _factored_pays(ra: int, d: int, rb: int | None, sqrt: bool) -> bool:
    """Whether an operand of factor rank ``ra`` is cheaper kept factored (flop model) when
    aligned with an operand of factor rank ``rb`` (None: dense).

    ``⟨F_aᵀW F_a, B⟩`` costs ``r d²`` against a dense ``B``, twice the ``r d²/2`` of forming
    the matrix (symmetric accumulation): a factored operand only pays against another factored
    one, when ``r_a r_b + (r_a² + r_b²)/2 < (r_a + r_b) d/2`` (Gram matrices against forming
    both), or with ``sqrt`` (a thin SVD, ``r² d``, against an eigendecomposition, ``d³``)."""
    if ra >= d:
        return False
    if sqrt:
        return True
    if rb is None:
        return False
    return ra * rb + (ra * ra + rb * rb) / 2 < (ra + rb) * d / 2


def _keep_factored(M: Matrix, other: Matrix, sqrt: bool) -> bool:
    return isinstance(M, FactoredAGOP) and _factored_pays(M.rank, M.d, _low_rank(other), sqrt)


@full_float32()
def matrix_sqrt(M: Matrix) -> Matrix:
    """``M^{1/2}`` in ``M``'s form: :meth:`FactoredAGOP.sqrt` or :func:`psd_sqrt`."""
    return M.sqrt() if isinstance(M, FactoredAGOP) else psd_sqrt(M)


@full_float32()
def alignment(A: Matrix, B: Matrix, *, centered: bool = False, sqrt: bool = False,
              method: str = "auto") -> float:
    """AGOP alignment ``ρ(A, B) = ⟨A, B⟩_F / (‖A‖_F ‖B‖_F)`` (docs/conventions.md; the default).

    Args:
        A, B: ``d × d`` tensors or :class:`FactoredAGOP` (any mix).
        centered: the Pearson correlation of the entries instead: the cosine of
            ``A - mean(A)·11ᵀ`` and ``B - mean(B)·11ᵀ`` (mean over all ``d²`` entries).
        sqrt: compare ``A^{1/2}`` and ``B^{1/2}`` (PSD square roots of the symmetric parts,
            eigenvalues below rounding level set to 0); applied before centring when both are set.
        method: ``"factored"`` never forms a factored operand's ``d × d`` matrix (inner products
            from ``r × r`` Gram matrices: ``⟨F_aᵀW_aF_a, F_bᵀW_bF_b⟩ = Σ w_i v_j (f_i·g_j)²``,
            entry sums ``Σ w_i (f_i·1)²``), ``"dense"`` forms every matrix, ``"auto"`` picks
            the fewer flops per operand (see ``_keep_factored``).

    Returns:
        ``ρ`` in ``[-1, 1]`` as a Python float (accumulated in float64); ``nan`` when a matrix
        (after centring) is zero or not finite.
    """
    if method not in ("auto", "dense", "factored"):
        raise AGOPError(f"method must be 'auto', 'dense' or 'factored', got {method!r}")
    _check_square(A, "A")
    _check_square(B, "B")
    if tuple(A.shape) != tuple(B.shape):
        raise AGOPError(f"A and B must have the same shape, got {tuple(A.shape)} and "
                        f"{tuple(B.shape)}")
    if B.device != A.device:  # e.g. a model's AGOP on the GPU against a reference on the CPU
        B = B.to(A.device)
    if method != "factored":
        keep_a = method == "auto" and _keep_factored(A, B, sqrt)
        keep_b = method == "auto" and _keep_factored(B, A, sqrt)
        A = A.matrix() if isinstance(A, FactoredAGOP) and not keep_a else A
        B = B.matrix() if isinstance(B, FactoredAGOP) and not keep_b else B
    if sqrt:
        A, B = matrix_sqrt(A), matrix_sqrt(B)
    if centered:  # dense operands are centred explicitly (accurate); factored ones by formula
        A = A - A.double().mean().to(A.dtype) if isinstance(A, Tensor) else A
        B = B - B.double().mean().to(B.dtype) if isinstance(B, Tensor) else B
    ab, aa, bb = _inner(A, B), _inner(A, A), _inner(B, B)
    if centered:
        D = float(A.shape[0]) ** 2
        sa, sb = _entry_sum(A), _entry_sum(B)
        ab, aa, bb = ab - sa * sb / D, aa - sa * sa / D, bb - sb * sb / D
    if not (math.isfinite(ab) and math.isfinite(aa) and math.isfinite(bb)) or aa <= 0 or bb <= 0:
        return float("nan")
    return max(-1.0, min(1.0, ab / math.sqrt(aa * bb)))


@full_float32()
def agop_for_alignment(f: Predictor, X: Tensor, reference: Matrix | None = None, *,
                       sqrt: bool = False, method: str = "auto",
                       chunk_size: int | None = DEFAULT_CHUNK, check: bool = True) -> Matrix:
    """``G(f, X)`` in the form that makes its alignment with ``reference`` cheapest: a
    :class:`FactoredAGOP` (the ``(n·c) × d`` gradients; no ``d × d`` matrix) when
    ``n·c < d`` and the reference is factored too (or ``sqrt``), else the dense matrix
    accumulated chunk by chunk. ``method="factored"`` / ``"dense"`` force a form. The number
    of outputs ``c`` is read from the first chunk, so no extra forward pass is made."""
    if method not in ("auto", "dense", "factored"):
        raise AGOPError(f"method must be 'auto', 'dense' or 'factored', got {method!r}")
    X = on_model_device(f, X)
    _prepare(f, X, check)
    n, d = X.shape[0], int(X[0].numel())
    chunks = _chunks(X, chunk_size)
    first = _chunk_gradients(f, next(chunks))
    r = n * first.shape[1]
    if method == "auto":  # no reference: assume one of the same rank
        rb = r if reference is None else _low_rank(reference)
        factored = _factored_pays(r, d, rb, sqrt)
    else:
        factored = method == "factored"
    if factored:
        grads = torch.cat([first] + [_chunk_gradients(f, x) for x in chunks])
        return FactoredAGOP.from_gradients(grads, n)
    block = 512
    A = torch.zeros(d, d, dtype=X.dtype, device=X.device)
    syrk_upper_(A, first.reshape(-1, d), block)
    for x in chunks:
        syrk_upper_(A, _chunk_gradients(f, x).reshape(-1, d), block)
    mirror_upper_(A, block)
    return A.div_(n)


@full_float32()
def agop_alignment(f: Predictor, X: Tensor, reference: Matrix, *, centered: bool = False,
                   sqrt: bool = False, method: str = "auto",
                   chunk_size: int | None = DEFAULT_CHUNK, check: bool = True) -> float:
    """``ρ(G(f, X), reference)`` with the options of :func:`alignment`, computing ``G`` in the
    cheaper form (:func:`agop_for_alignment`): with a factored reference (the real-data proxy)
    and ``n·c`` small against ``d``, only Gram matrices of the gradients are formed."""
    d = int(X[0].numel())
    if tuple(reference.shape) != (d, d):
        raise AGOPError(f"reference must be {d} x {d} for inputs of size {d}, got "
                        f"{tuple(reference.shape)}")
    G = agop_for_alignment(f, X, reference, sqrt=sqrt, method=method, chunk_size=chunk_size,
                           check=check)
    return alignment(G, reference, centered=centered, sqrt=sqrt,
                     method="factored" if method == "factored" else "auto")
