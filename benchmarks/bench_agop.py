"""Benchmark: AGOP of an MLP and AGOP alignment tracked during GD, side by side in one process.

Model: ``MLP(d, 1, width=1024, depth=3)`` (d -> 1024 -> 1024 -> 1, ReLU, NTK parameterisation),
``n = 4000`` Gaussian inputs, float32, ``torch.set_num_threads(2)``, d = 784 and d = 3072.

Methods, timed interleaved (one repeat of each in turn, medians reported):

- ``catapults``: :func:`catapults.agop.agop` (chunks of 2000 samples, per-sample check on,
  symmetric block accumulation of ``FᵀF``).
- ``(a) vmap(jacrev)``: ``torch.func.vmap(jacrev(f_single))`` over chunks of 2000 samples, then
  ``JᵀJ`` accumulated per chunk.
- ``(b) floor``: one forward and one backward pass over all n samples for the input gradients
  ``F`` (no chunking, no check) and the single product ``FᵀF``.

Error metric: relative Frobenius error ``‖A_32 - A_64‖_F / ‖A_64‖_F`` of each method's float32
AGOP against :func:`catapults.agop.agop` of the same model (same weights) in float64; also
against a float64 AGOP on the float32 ReLU activation pattern (see ``same_branch_reference``).

Tracking: the median wall time of a plain full-batch GD step (forward, MSE, backward, SGD
update) on the same model and data, and of a step that also computes ``ρ(G(f_θ, X), G*)`` with
the exact target AGOP of ``x1*x2`` (``AGOPMonitor.measure``, what the monitor does); the ratio
is reported. A last table compares the Gram path (factored AGOPs, no ``d × d`` matrix) with the
dense path for ``d > n``.

Run: ``python benchmarks/bench_agop.py [--quick] [--out docs/benchmarks_agop.md]``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import cpu_model
from torch.func import jacrev, vmap

from catapults.agop import agop, agop_alignment, agop_factor, alignment
from catapults.data.targets import parse_target
from catapults.models import MLP
from catapults.monitors.agop import AGOPMonitor

N = 4000
CHUNK = 2000


def vmap_jacrev_agop(model, X, chunk=CHUNK):
    """Recipe (a): per-sample Jacobians with vmap(jacrev), chunked, accumulated into JᵀJ."""
    n, d = X.shape[0], X[0].numel()

    def f_single(x):
        return model(x.unsqueeze(0)).reshape(-1)

    jac = vmap(jacrev(f_single))
    A = torch.zeros(d, d, dtype=X.dtype)
    for i in range(0, n, chunk):
        J = jac(X[i:i + chunk]).reshape(-1, d)
        A.addmm_(J.T, J)
    return A / n


def floor_agop(model, X):
    """Floor (b): one forward + backward for the input gradients, one FᵀF product."""
    x = X.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x)
    g = g.reshape(X.shape[0], -1)
    return (g.T @ g) / X.shape[0]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds of each function, timed one after the other in every repeat."""
    outs = {k: fn() for k, fn in fns.items()}  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, _ = timed(fn)
            times[k].append(t)
    interleaved.raw = times  # type: ignore[attr-defined]
    return {k: statistics.median(v) for k, v in times.items()}, outs


def paired_ratio(raw: dict, a: str, b: str) -> float:
    """Median over repeats of time(a) / time(b), each pair timed back to back (robust to a
    load that drifts during the run)."""
    return statistics.median(x / y for x, y in zip(raw[a], raw[b]))


def rel_fro(A, ref):
    return float((A.detach().double() - ref).norm() / ref.norm())


def same_branch_reference(model, X):
    """float64 AGOP of ``model`` on the ReLU activation pattern of its float32 forward pass.

    A ReLU net is piecewise linear: where a pre-activation lies within float32 rounding of 0,
    float32 and float64 can take different branches and the sample's gradient then differs at
    the level of one unit's contribution (~1e-2 relative), whatever the method. Fixing the float32
    branch and evaluating everything else in float64 isolates the arithmetic error."""
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    masks: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: masks.append(o > 0)) for m in relus]
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    m64 = copy.deepcopy(model).double()
    it = iter(masks)
    for m in m64.modules():
        if isinstance(m, torch.nn.ReLU):
            m.register_forward_hook(lambda mod, i, o: i[0] * next(it).to(i[0].dtype))
    return agop(m64, X.double(), chunk_size=None, check=False)


def bench_agop(d: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = MLP(d, 1, width=1024, depth=3, seed=0)
    X = torch.randn(N, d)
    fns = {
        "catapults": lambda: agop(model, X, chunk_size=CHUNK),
        "vmap_jacrev": lambda: vmap_jacrev_agop(model, X),
        "floor": lambda: floor_agop(model, X),
    }
    med, outs = interleaved(fns, repeats)
    ratios = {"a": paired_ratio(interleaved.raw, "catapults", "vmap_jacrev"),
              "b": paired_ratio(interleaved.raw, "catapults", "floor")}
    model64 = copy.deepcopy(model).double()
    ref = agop(model64, X.double())
    same = same_branch_reference(model, X)
    errs = {k: rel_fro(v, ref) for k, v in outs.items()}
    errs_same = {k: rel_fro(v, same) for k, v in outs.items()}
    return {"d": d, "times": med, "ratios": ratios, "errors": errs,
            "errors_same_branch": errs_same}


def bench_tracking(d: int, steps: int) -> dict:
    """Plain GD step vs GD step + AGOP alignment with the exact target AGOP, interleaved."""
    torch.manual_seed(1)
    model = MLP(d, 1, width=1024, depth=3, seed=1)
    target = parse_target("x1*x2", d)
    X = torch.randn(N, d)
    y = target(X.double()).float().reshape(-1, 1)
    ref = target.expected_agop().float()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        opt.step()

    monitor = AGOPMonitor(X, ref, every=1)  # what the monitor does at every step

    def step_and_align():
        rho = monitor.measure(model)
        step()
        return rho

    med, _ = interleaved({"step": step, "step+alignment": step_and_align}, steps)
    return {"d": d, "times": med, "ratio": paired_ratio(interleaved.raw, "step+alignment", "step")}


def bench_gram(d: int, n: int, repeats: int) -> dict:
    """d > n: alignment of the network's AGOP with a factored reference (real-data proxy case),
    Gram path vs forming both d × d matrices."""
    torch.manual_seed(2)
    model = MLP(d, 1, width=1024, depth=3, seed=2)
    other = MLP(d, 1, width=1024, depth=3, seed=3)
    X = torch.randn(n, d)
    ref = agop_factor(other, X)

    def dense():
        return alignment(agop(model, X), ref.matrix(), method="dense")

    def gram_path():
        return agop_alignment(model, X, ref, method="factored")

    med, outs = interleaved({"gram": gram_path, "dense": dense}, repeats)
    return {"d": d, "n": n, "times": med, "diff": abs(outs["gram"] - outs["dense"])}


def machine() -> str:
    cpu = cpu_model()
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--out", default=None, help="write a Markdown report to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    repeats, steps = (2, 3) if args.quick else (11, 9)
    load0 = os.getloadavg()
    t0 = time.perf_counter()

    res = [bench_agop(d, repeats) for d in (784, 3072)]
    track = [bench_tracking(d, steps) for d in (784, 3072)]
    gram = [bench_gram(3072, n, repeats) for n in (500, 1000)]
    load1 = os.getloadavg()

    lines = ["| d | catapults (s) | (a) vmap(jacrev) (s) | (b) floor (s) | catapults / (a) "
             "| catapults / (b) |", "|---|---|---|---|---|---|"]
    elines = ["| d | method | error vs float64 | error vs float64, same ReLU branch |",
              "|---|---|---|---|"]
    verdicts = []
    names = {"catapults": "catapults", "vmap_jacrev": "(a) vmap(jacrev)", "floor": "(b) floor"}
    for r in res:
        t, e, es = r["times"], r["errors"], r["errors_same_branch"]
        va, vb = r["ratios"]["a"], r["ratios"]["b"]
        lines.append(f"| {r['d']} | {t['catapults']:.3f} | {t['vmap_jacrev']:.3f} "
                     f"| {t['floor']:.3f} | {va:.2f}x | {vb:.2f}x |")
        for k, label in names.items():
            elines.append(f"| {r['d']} | {label} | {e[k]:.1e} | {es[k]:.1e} |")
        verdicts += [(f"d={r['d']}: never slower than (a)", va <= 1.0),
                     (f"d={r['d']}: within 1.5x of (b)", vb <= 1.5),
                     (f"d={r['d']}: float32 error <= 1e-4 vs float64", e["catapults"] <= 1e-4),
                     (f"d={r['d']}: same-branch error <= 1e-4", es["catapults"] <= 1e-4)]
    tlines = ["| d | GD step (s) | GD step + alignment (s) | ratio |", "|---|---|---|---|"]
    for r in track:
        t = r["times"]
        tlines.append(f"| {r['d']} | {t['step']:.3f} | {t['step+alignment']:.3f} "
                      f"| {r['ratio']:.2f}x |")
    glines = ["| d | n | Gram path (s) | dense path (s) | speed-up | abs. difference of ρ |",
              "|---|---|---|---|---|---|"]
    for g in gram:
        glines.append(f"| {g['d']} | {g['n']} | {g['times']['gram']:.3f} "
                      f"| {g['times']['dense']:.3f} "
                      f"| {g['times']['dense'] / g['times']['gram']:.1f}x | {g['diff']:.1e} |")
    vlines = [f"- {name}: {'met' if ok else '**NOT met**'}" for name, ok in verdicts]
    blocks = ["\n".join(x) for x in (lines, elines, tlines, glines, vlines)]
    total = time.perf_counter() - t0
    print("\n\n".join(blocks))
    print(f"\ntotal {total:.0f} s; load average {load0[0]:.2f} -> {load1[0]:.2f}")

    if args.out:
        cmd = "python benchmarks/bench_agop.py" + (" --quick" if args.quick else "") + \
            f" --out {args.out}"
        report = f"""## AGOP (issue 4)

- Machine: {machine()}
- Command: `{cmd}` ({total:.0f} s)
- Date: {dt.datetime.now().strftime("%Y-%m-%d %H:%M")}; {repeats} repeats (medians), the
  methods interleaved in one process; load average (1 min) {load0[0]:.2f} at the start and
  {load1[0]:.2f} at the end (the 2 cores may be shared with other jobs: absolute times are
  noisy, the ratios are measured side by side).
- Setting: `MLP(d, 1, width=1024, depth=3)` (d -> 1024 -> 1024 -> 1, ReLU, no bias, NTK
  parameterisation), n = {N} Gaussian inputs, float32, `torch.set_num_threads(2)`.
- Methods: `catapults.agop.agop` (chunks of {CHUNK} samples, per-sample check included,
  `FᵀF` accumulated on the upper-triangular 512 x 512 blocks only); (a) `vmap(jacrev)`
  per-sample Jacobians in chunks of {CHUNK}, `JᵀJ` accumulated; (b) the floor: one forward and
  one backward pass for all n input gradients `F` plus the single product `FᵀF`.
- Error metric: relative Frobenius error `‖A_32 − A_64‖_F / ‖A_64‖_F`, with `A_64` the AGOP
  of the same model (same weights, same inputs) in float64. Second column: `A_64` computed in
  float64 on the ReLU activation pattern of the float32 forward pass. A ReLU net is piecewise
  linear; a pre-activation within float32 rounding of 0 can take the other branch in float64,
  which changes that sample's gradient by about one unit's share (~1e-2 relative) whatever
  the method, so the first column measures these branch flips (identical for all three
  methods) and the second the arithmetic. The first column varies with the draw of weights and
  inputs: one flipped sample among 4000 at d = 3072 costs about 4e-5, so a draw with a few
  flips would exceed 1e-4 for all three methods alike; the arithmetic error stays near 2e-7.

Time of one AGOP (seconds, medians of the repeats; the ratios are medians of the per-repeat
ratios, each pair timed back to back):

{blocks[0]}

All three methods do the same matrix products for the input gradients (one forward pass, one
backward pass to the input). At d = 784 these dominate (`FᵀF` is about a tenth of the time),
so the three are at parity and their differences are within the run-to-run noise of a shared
2-core machine (about ±10 %): the "never slower than (a)" target holds here by the medians, not
by a structural margin. At d = 3072 `FᵀF` (n·d² flops) dominates, and `catapults` computes only
its blocks on or above the diagonal (about 60 % of the flops of the full product that the floor
uses), which is why it is faster than the floor there.

Accuracy (relative Frobenius error of the float32 AGOP):

{blocks[1]}

Alignment tracked every step (the monitor with `every: 1`): one full-batch GD step (forward,
MSE, backward, update) with and without `AGOPMonitor.measure` (the network's AGOP and its
alignment with the exact target AGOP of `x1*x2`) on all n = {N} training inputs:

{blocks[2]}

A measurement costs one forward and one input-backward pass over all n inputs plus `FᵀF`
(n·d²/2 flops), against a GD step's forward and full backward pass: about one to two steps' worth
at these sizes. The monitor's `every` (default 50) and `n_samples` bound the overhead: with
`every: 50` it is a few per cent of the run.

Gram path, d > n: the alignment of the network's AGOP with a factored reference AGOP (the
real-data proxy case) from Gram matrices of the gradients (no d x d matrix), against forming
both d x d matrices:

{blocks[3]}

Targets in this run:

{blocks[4]}
"""
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
