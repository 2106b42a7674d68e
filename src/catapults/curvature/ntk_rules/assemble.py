"""From the rules' factors to the kernel: merging the calls of a shared module and the chunks of
samples, choosing per factor between the Hadamard form and per-sample gradients, and the
exactly symmetric Gram products.

Cost of a :class:`HadamardFactor` with ``n`` samples, ``c`` outputs, ``T`` positions, input
width ``da`` and output width ``dg`` (flops; memory in brackets):

- Hadamard form, ``Σ_{s,t}(H_s·H'_t)(sw² F_s·F'_t + sb²)``: ``(n·T)²·(da + c·dg)/2`` for the
  trace kernel, ``(n·T)²·da/2 + (n·c·T)²·dg/2`` for the full one [``(n·c·T)²``];
- per-sample gradients ``sw Σ_t H_t F_tᵀ``: ``n·c·T·dg·da`` to form, ``(n·c)²·dg·da/2`` for
  the Gram [``n·c·dg·da``].

``T = 1`` (a dense layer on vectors, the MLP) always takes the Hadamard form: ``n²(da + c·dg)/2``
against the per-sample gradients' ``n²·c²·dg·da/2``. With positions (tokens, shared layers,
embeddings) the cheaper one is taken, the Hadamard form only while its Gram matrices stay
under 2^25 entries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from catapults.curvature.ntk_rules.registry import Factor, GradFactor, HadamardFactor
from catapults.errors import KernelError
from catapults.linalg.gram import add_gram_products_upper_, gram, syrk_upper_

HADAMARD_MAX_ENTRIES = 2**25
WIDE = 1024
"""Per-sample gradient factors with at least this many columns get their own Gram products."""


def merge_calls(per_call: list[list[Factor]], name: str) -> list[Factor]:
    """One factor list for a module run several times: per-sample gradients summed over the
    calls, Hadamard factors joined along their positions (the cross terms between calls are the
    pairs of positions from different calls)."""
    if len(per_call) <= 1:  # a module never called contributes nothing
        return per_call[0] if per_call else []
    if len({len(fs) for fs in per_call}) != 1:
        raise KernelError(f"the NTK rule of module {name!r} returned a different number of "
                          "factors for its calls")
    out: list[Factor] = []
    for parts in zip(*per_call):
        if all(isinstance(f, HadamardFactor) for f in parts) and \
                len({(f.F is None, f.F is not None and f.F.is_floating_point(), f.sw, f.sb)
                     for f in parts}) == 1:
            F0 = parts[0].F
            out.append(HadamardFactor(
                torch.cat([f.H for f in parts], 1),
                None if F0 is None else torch.cat([f.F for f in parts], 1),
                parts[0].sw, parts[0].sb))
        else:
            n_rows = parts[0].H.shape[0] if isinstance(parts[0], HadamardFactor) \
                else parts[0].G.shape[0]
            G = to_grad(parts[0], n_rows)
            for f in parts[1:]:
                G = G + to_grad(f, n_rows)
            out.append(GradFactor(G))
    return out


def merge_chunks(per_chunk: list[list[Factor]]) -> list[Factor]:
    """Factors of consecutive chunks of samples, stacked along their rows."""
    if len(per_chunk) == 1:
        return per_chunk[0]
    out: list[Factor] = []
    for parts in zip(*per_chunk):
        if isinstance(parts[0], GradFactor):
            out.append(GradFactor(torch.cat([f.G for f in parts])))
        else:
            F0 = parts[0].F
            out.append(HadamardFactor(torch.cat([f.H for f in parts]),
                                      None if F0 is None else torch.cat([f.F for f in parts]),
                                      parts[0].sw, parts[0].sb))
    return out


def to_grad(f: Factor, rows: int) -> Tensor:
    """Per-sample gradients ``(b·c, m)`` of a factor (a Hadamard factor's ``sw Σ_t H_t F_tᵀ``
    and ``sb Σ_t H_t``; integer inputs scatter into the rows of the indices present)."""
    if isinstance(f, GradFactor):
        return f.G
    H, F = f.H, f.F
    bc, T, dg = H.shape
    parts = []
    if F is not None:
        b = F.shape[0]
        c = bc // b
        Hv = H.view(b, c, T, dg)
        if F.is_floating_point():
            Gw = torch.einsum("ajtg,atf->ajgf", Hv, F)
        else:
            uniq, inv = torch.unique(F, return_inverse=True)
            Gw = torch.zeros(b, c, uniq.numel(), dg, dtype=H.dtype, device=H.device)
            Gw.scatter_add_(2, inv.view(b, 1, T, 1).expand(b, c, T, dg), Hv)
        parts.append(Gw.reshape(bc, -1) * f.sw if f.sw != 1.0 else Gw.reshape(bc, -1))
    if f.sb != 0.0:
        parts.append(H.sum(1) * f.sb if f.sb != 1.0 else H.sum(1))
    if not parts:
        return H.new_zeros(bc, 0)
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def use_hadamard(f: HadamardFactor, n: int, c: int, kind: str) -> bool:
    """The cost model of the module docstring."""
    H, F = f.H, f.F
    T, dg = H.shape[1], H.shape[2]
    floating = F is None or F.is_floating_point()
    if T == 1 and floating:
        return True
    da = 0 if F is None else (F.shape[2] if floating else int(torch.unique(F).numel()))
    cc = 1 if kind == "trace" else c
    had = (n * T) ** 2 * da / 2 + (n * cc * T) ** 2 * dg * (c // cc) / 2
    grad = n * c * T * dg * max(da, 1) + (n * c) ** 2 * dg * (da + 1) / 2
    return had < grad and (n * cc * T) ** 2 <= HADAMARD_MAX_ENTRIES


def _hadamard_vectors(fs: list[HadamardFactor], n: int, c: int, kind: str, K: Tensor) -> None:
    """Add the ``T = 1`` factors (dense layers on vectors) to ``K``, blockwise on the upper
    triangle (:func:`add_gram_products_upper_` for the trace kernel)."""
    if kind == "trace" or c == 1:
        terms = []
        for f in fs:
            H = f.H.reshape(n, -1)  # (n, c·dg)
            F = None if f.F is None else f.F.reshape(n, -1)
            if F is not None and H.shape[1] == 1 and f.sb == 0.0:
                terms.append((F * H, None, f.sw ** 2, 0.0))  # (F Fᵀ)∘(h hᵀ) = (h∘F)(h∘F)ᵀ
            elif F is not None:
                terms.append((H, F, f.sw ** 2, f.sb ** 2))
            elif f.sb != 0.0:
                terms.append((H, None, f.sb ** 2, 0.0))
        if terms:
            add_gram_products_upper_(K, terms)
        return
    Kv = K.view(n, c, n, c)
    for f in fs:
        Hv = f.H.view(n, c, -1)
        P = None if f.F is None else gram(f.F.reshape(n, -1))
        for j in range(c):
            for jj in range(j, c):
                Q = Hv[:, j] @ Hv[:, jj].T
                block = Q * (f.sb ** 2) if f.sb != 0.0 else torch.zeros_like(Q)
                if P is not None:
                    block.add_(Q.mul_(P), alpha=f.sw ** 2)
                Kv[:, j, :, jj] += block
                if jj != j:
                    Kv[:, jj, :, j] += block.T


def _hadamard_positions(f: HadamardFactor, n: int, c: int, kind: str, K: Tensor) -> None:
    """Add ``Σ_{s,t} (H_s·H'_t)(sw² F_s·F'_t + sb²)`` of a factor with positions to ``K``."""
    H, F = f.H, f.F
    T, dg = H.shape[1], H.shape[2]
    if F is None:
        M = H.new_zeros(n, T, n, T)
    elif F.is_floating_point():
        M = gram(F.reshape(n * T, -1)).view(n, T, n, T) * (f.sw ** 2)
    else:
        flat = F.reshape(-1)
        M = (flat[:, None] == flat[None, :]).to(H.dtype).view(n, T, n, T) * (f.sw ** 2)
    if f.sb != 0.0:
        M = M + f.sb ** 2
    if kind == "trace" or c == 1:
        H2 = H.view(n, c, T, dg).permute(0, 2, 1, 3).reshape(n * T, c * dg)
        K.add_(torch.einsum("asbt,asbt->ab", gram(H2).view(n, T, n, T), M))
    else:
        PH = gram(H.reshape(n * c * T, dg)).view(n, c, T, n, c, T)
        K.add_(torch.einsum("ajsbkt,asbt->ajbk", PH, M).reshape(n * c, n * c))


def assemble(factors: list[Factor], n: int, c: int, kind: str, dtype: torch.dtype,
             device: torch.device, memory_budget: float) -> Tensor:
    """``Σ`` of the factors' contributions: ``(n·c)²`` (full) or ``n²`` (trace), right on and
    above the diagonal only (the per-sample gradients' products are not computed below it):
    the caller mirrors the upper triangle once (:func:`catapults.linalg.gram.mirror_upper_`)."""
    N = n if kind == "trace" else n * c
    K = torch.zeros(N, N, dtype=dtype, device=device)
    grads: list[Tensor] = []
    vectors: list[HadamardFactor] = []
    for f in factors:
        if isinstance(f, GradFactor):
            grads.append(f.G)
        elif use_hadamard(f, n, c, kind):
            if f.H.shape[1] == 1 and (f.F is None or f.F.is_floating_point()):
                vectors.append(f)
            else:
                _hadamard_positions(f, n, c, kind, K)
        else:
            grads.append(to_grad(f, n * c))
    _hadamard_vectors(vectors, n, c, kind, K)
    _add_grams_upper(K, [G.reshape(N, -1) for G in grads if G.shape[1] > 0], memory_budget)
    return K


def _add_grams_upper(K: Tensor, grads: list[Tensor], memory_budget: float) -> None:
    """``K += Σ G Gᵀ`` on the blocks on and above the diagonal only (the caller mirrors), in
    place (no ``N × N`` temporaries); each wide ``G`` (at least :data:`WIDE` columns) in its own
    products, the narrow ones (bias, norms) joined into one matrix first, while that fits
    ``memory_budget``: a product per factor would cost a pass over ``K`` each."""
    N = K.shape[0]
    wide = [G for G in grads if G.shape[1] >= WIDE]
    narrow = [G for G in grads if G.shape[1] < WIDE]
    cols = sum(G.shape[1] for G in narrow)
    if len(narrow) > 1 and N * cols * K.element_size() <= memory_budget:
        narrow = [torch.cat(narrow, 1)]
    for G in wide + narrow:
        syrk_upper_(K, G.T)
