"""Symmetric Gram products: the library's halving tiles (``catapults.linalg.gram``) against the
strips of ``block`` rows it used before (kept here as the baseline), side by side in one
process (same inputs and threads, one untimed warm-up, interleaved repeats, medians).

Two workloads, each as a multiple of its FLOP floor (the products on and above the diagonal,
``n²·m`` flops for inner dimension ``m``, at the rate of a full ``(n, 1024) × (1024, n)``
product timed in the same loop):

1. the Gram stage of the layer-wise MLP kernel (``add_gram_products_upper_`` on the factors of
   ``MLP(100, 1, width=1024, depth=3)``: ``(H₁H₁ᵀ)∘(F₀F₀ᵀ) + (H₂H₂ᵀ)∘(F₁F₁ᵀ) + F̃₂F̃₂ᵀ``, inner
   dimensions 100 + 4·1024);
2. ``gram(J)`` of a Jacobian as wide as the issue's CNN's (``p = 38785``).

A sweep of the leaf size (``--leaves``) shows where the default :data:`LEAF` sits.

    python benchmarks/bench_gram.py [--mlp-sizes 1000,2000,4000] [--jac-sizes 256,1000]
        [--leaves 64,128,256] [--repeats 7] [--threads 2] [--wait-idle 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from machine import finish, footer, record_header, save_result, wait_quiet

import catapults.linalg.gram  # noqa: F401  (the module; the package exports a function `gram`)

G = sys.modules["catapults.linalg.gram"]
QUIET: dict[str, Any] = {"max_wait_s": 0.0, "waited_s": 0.0, "busy": []}


def strips_terms(K: torch.Tensor, terms: list, block: int) -> torch.Tensor:
    """The baseline: ``K += Σ (H Hᵀ)∘(cw F Fᵀ + cb)`` on strips of ``block`` rows, each strip
    from its diagonal to the right edge (the diagonal ``block × block`` squares whole)."""
    n = K.shape[0]
    P, Q = K.new_empty(block * n), K.new_empty(block * n)
    for i in range(0, n, block):
        Kr = K[i:i + block, i:]
        shape = Kr.shape
        for H, F, cw, cb in terms:
            if F is None:
                Kr.addmm_(H[i:i + block], H[i:].T, alpha=cw)
                continue
            Pb = torch.mm(F[i:i + block], F[i:].T, out=P[:shape.numel()].view(shape))
            Qb = torch.mm(H[i:i + block], H[i:].T, out=Q[:shape.numel()].view(shape))
            Kr.addcmul_(Qb, Pb, value=cw)
            if cb != 0.0:
                Kr.add_(Qb, alpha=cb)
    return K


def strips_gram(A: torch.Tensor, block: int) -> torch.Tensor:
    """The baseline ``A Aᵀ``: strips of ``block`` rows, then mirrored."""
    n = A.shape[0]
    out = torch.empty(n, n, dtype=A.dtype)
    for i in range(0, n, block):
        torch.mm(A[i:i + block], A[i:].T, out=out[i:i + block, i:])
    return G.mirror_upper_(out)


def old_block(n: int) -> int:
    """The strip height the library used: 256 rows up to n = 2048, 384 above."""
    return 256 if n <= 2048 else 384


def timed(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall times per repeat after one warm-up each, the order reversed every other repeat."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            wait_quiet(QUIET)
            t = time.perf_counter()
            fns[k]()
            wall[k].append(time.perf_counter() - t)
    return wall


def report(title: str, n: int, flops: float, wall: dict[str, list[float]]) -> dict[str, Any]:
    """Print one row: each method's median and its multiple of the floor (paired per repeat
    with the full product timed in the same repeat, then the median)."""
    rates = [2 * n * n * 1024 / t for t in wall["gemm"]]
    row: dict[str, Any] = {"n": n, "flops": flops, "rate": statistics.median(rates),
                           "wall_s": wall, "over_floor": {}}
    cells = []
    for k, v in wall.items():
        if k == "gemm":
            continue
        ratio = statistics.median([t * r / flops for t, r in zip(v, rates)])
        row["over_floor"][k] = ratio
        cells.append(f"{statistics.median(v) * 1e3:.1f} ms ({ratio:.2f}x)")
    print(f"| {title} | {n} | {row['rate'] / 1e9:.0f} | {flops / row['rate'] * 1e3:.1f} | "
          + " | ".join(cells) + " |", flush=True)
    return row


def bench_mlp(n: int, leaves: list[int], repeats: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(n)
    H1, H2, F1, F2 = (torch.randn(n, 1024, generator=g) for _ in range(4))
    F0 = torch.randn(n, 100, generator=g)
    terms = [(H1, F0, 0.5, 0.0), (H2, F1, 0.5, 0.0), (F2, None, 0.5, 0.0)]
    A, B = torch.randn(n, 1024, generator=g), torch.randn(n, 1024, generator=g)
    fns: dict[str, Callable[[], Any]] = {
        "strips": lambda: strips_terms(torch.zeros(n, n), terms, old_block(n))}
    for leaf in leaves:
        fns[f"tiles {leaf}"] = lambda b=leaf: G.add_gram_products_upper_(torch.zeros(n, n),
                                                                         terms, b)
    fns["gemm"] = lambda: A @ B.T
    ref = G.mirror_upper_(fns["strips"]())
    for k in fns:
        if k.startswith("tiles"):
            err = (G.mirror_upper_(fns[k]()) - ref).abs().max() / ref.abs().max()
            assert err < 1e-5, (k, float(err))
    return report("MLP Gram stage", n, n * n * (100 + 4 * 1024), timed(fns, repeats))


def bench_jacobian(n: int, leaves: list[int], repeats: int, p: int = 38785) -> dict[str, Any]:
    g = torch.Generator().manual_seed(n)
    J = torch.randn(n, p, generator=g)
    A, B = torch.randn(n, 1024, generator=g), torch.randn(n, 1024, generator=g)
    fns: dict[str, Callable[[], Any]] = {"strips": lambda: strips_gram(J, old_block(n))}
    for leaf in leaves:
        fns[f"tiles {leaf}"] = lambda b=leaf: G.gram(J, block=b)
    fns["gemm"] = lambda: A @ B.T
    ref = fns["strips"]()
    for k in fns:
        if k.startswith("tiles"):
            assert (fns[k]() - ref).abs().max() / ref.abs().max() < 1e-5, k
    return report(f"gram(J), p = {p}", n, n * n * p, timed(fns, repeats))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlp-sizes", default="1000,2000,4000")
    ap.add_argument("--jac-sizes", default="256,1000")
    ap.add_argument("--leaves", default=f"64,{G.LEAF},256")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait-idle", type=float,
                    default=float(os.environ.get("BENCH_WAIT_IDLE", 0) or 0))
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: n = 300, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.mlp_sizes, args.jac_sizes, args.repeats = "300", "300", 1
    QUIET["max_wait_s"] = args.wait_idle
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = record_header(args.threads, torch.__version__)
    leaves = [int(v) for v in args.leaves.split(",")]
    print("| workload | n | full-product rate GFLOP/s | floor ms | strips (before) | "
          + " | ".join(f"tiles, leaf {b}" for b in leaves) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(leaves))
    res["mlp"] = [bench_mlp(int(n), leaves, args.repeats) for n in args.mlp_sizes.split(",") if n]
    res["jacobian"] = [bench_jacobian(int(n), leaves, args.repeats)
                       for n in args.jac_sizes.split(",") if n]
    finish(res, QUIET, t0)
    print(footer(res, args.threads, torch.__version__))
    save_result(res, args.json, "gram", quick=args.quick)


if __name__ == "__main__":
    main()
