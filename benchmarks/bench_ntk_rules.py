"""NTK layer rules (issue 13), two parts, each timed side by side in one process (same data and
threads, one untimed warm-up, interleaved repeats, medians), with the machine's CPU model, the
load average and how busy the other processes were before each timed call:

1. The issue's CNN ``Conv(3->64, 3x3, pad 1) ReLU Conv(64->64, 3x3, pad 1) ReLU
   global-average-pool Linear(64->1)``, float32, PyTorch's initialisation: the default
   ``empirical_ntk(model, X)`` (method ``auto``), the rules path (``method="rules"``) and the
   generic ``vmap(jacrev)`` path (``method="jacobian"``); wall time and process CPU time (the
   second is steadier on a shared machine), ratios against today's generic path and against
   the generic path's times when the issue was filed (2.6 s / 3.8 s at n = 1000 for 16x16 /
   32x32).
2. The MLP floor: ``MLP(100, 1, width=1024, depth=3, relu, no bias, ntk)``; the floor is the
   FLOPs of one forward pass, one backward pass (to every layer's output) and the symmetric
   layer-wise Gram products, divided by the rate of full ``(n, 1024) x (1024, n)`` products
   timed in the same loop.

    python benchmarks/bench_ntk_rules.py [--sizes 16:256,16:1000,32:256,32:1000]
        [--mlp-sizes 1000,4000] [--repeats 3] [--threads 2] [--wait-idle 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from machine import cpu_model, save_result, wait_quiet
from torch import nn

from catapults.models import MLP
from catapults.ntk import empirical_ntk

FILED_GENERIC_S = {(16, 1000): 2.6, (32, 1000): 3.8}  # issue 13, same machine, 2 threads
QUIET: dict[str, Any] = {"max_wait_s": 0.0, "waited_s": 0.0, "busy": []}


def cnn(out: int = 1) -> nn.Module:
    """The issue's CNN (shared by the NTK benchmarks), with ``out`` outputs."""
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, out))


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int
                ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, Any]]:
    """Wall and process CPU times of each function per repeat (after one untimed warm-up of
    each), the functions called in turn; and their last results."""
    out = {k: fn() for k, fn in fns.items()}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            wait_quiet(QUIET)
            t, c = time.perf_counter(), time.process_time()
            out[k] = fn()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return wall, cpu, out


def med(v: list[float]) -> float:
    return statistics.median(v)


def cnn_flops(side: int, n: int) -> float:
    """The floor of the issue's CNN kernel: the forward pass of both convolutions, the backward
    pass to the second convolution's input, the per-sample weight gradients of both (as many
    flops as the batched weight gradient) and the Gram product of ``J`` on the upper triangle
    (``n²·p``); pooling, ReLU and the last layer are negligible."""
    hw = side * side
    conv1, conv2 = 2 * n * hw * 64 * 27, 2 * n * hw * 64 * 576
    p = 64 * 27 + 64 + 64 * 576 + 64 + 65
    return float(2 * (conv1 + conv2) + conv2 + n * n * p)


def bench_cnn(sizes: list[tuple[int, int]], repeats: int) -> list[dict[str, Any]]:
    print("| input | n | default (auto) s | rules s | generic s | generic as filed s | "
          "generic / rules, wall | generic / rules, CPU time | as filed / default | "
          "as filed / rules | filed figure s | floor s | default / floor | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for side, n in sizes:
        torch.manual_seed(0)
        model = cnn()
        X = torch.randn(n, 3, side, side)
        A, B = torch.randn(n, 4096), torch.randn(n, 4096)  # the GEMM rate of the floor
        wall, cpu, out = interleaved({
            "default": lambda m=model, x=X: empirical_ntk(m, x),
            "rules": lambda m=model, x=X: empirical_ntk(m, x, method="rules"),
            "generic": lambda m=model, x=X: empirical_ntk(m, x, method="jacobian"),
            "as filed": lambda m=model, x=X: empirical_ntk(m, x, method="jacobian",
                                                          chunk_size=64),
            "gemm": lambda a=A, b=B: a @ b.T,
        }, repeats)
        flops = cnn_flops(side, n)
        rate = med([2 * n * n * 4096 / t for t in wall["gemm"]])
        floor = flops / rate
        w = {k: med(v) for k, v in wall.items()}
        c = {k: med(v) for k, v in cpu.items()}
        diff = float((out["rules"] - out["generic"]).abs().max() / out["generic"].abs().max())
        filed = FILED_GENERIC_S.get((side, n))
        paired = {k: med([a / b for a, b in zip(wall["as filed"], wall[k])])
                  for k in ("default", "rules")}  # per repeat, then the median
        print(f"| 3x{side}x{side} | {n} | {w['default']:.2f} | {w['rules']:.2f} | "
              f"{w['generic']:.2f} | {w['as filed']:.2f} | {w['generic'] / w['rules']:.2f} | "
              f"{c['generic'] / c['rules']:.2f} | {paired['default']:.2f} | "
              f"{paired['rules']:.2f} | {filed if filed else '-'} | {floor:.2f} | "
              f"{w['default'] / floor:.2f} | {diff:.1e} |", flush=True)
        rows.append({"side": side, "n": n, "wall_s": wall, "cpu_s": cpu, "median_wall_s": w,
                     "median_cpu_s": c, "filed_generic_s": filed, "max_rel_diff": diff,
                     "as_filed_over": paired, "floor_flops": flops, "gemm_rate": rate,
                     "floor_s": floor})
    return rows


def mlp_flops(n: int, d: int = 100, width: int = 1024) -> float:
    """One forward pass, one backward pass to every layer's output (not to the input), and the
    symmetric Gram products of the layer-wise formula (inner dimensions d, width for layer 1;
    width, width for layer 2; width for the last layer's ``a ∘ h``), for ``c = 1``."""
    fwd = 2 * n * (d * width + width * width + width)
    bwd = 2 * n * (width * width + width)
    grams = n * n * (d + 4 * width)
    return float(fwd + bwd + grams)


def bench_mlp_floor(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    print("\n| n | NTK s | floor GFLOP | full-product rate GFLOP/s | floor s | NTK / floor |")
    print("|---|---|---|---|---|---|")
    rows = []
    for n in sizes:
        torch.manual_seed(0)
        model = MLP(100, 1, width=1024, depth=3, activation="relu", bias=False,
                    parameterization="ntk", seed=0)
        X = torch.randn(n, 100)
        A, B = torch.randn(n, 1024), torch.randn(n, 1024)
        wall, _, _ = interleaved({"ntk": lambda m=model, x=X: empirical_ntk(m, x),
                                  "gemm": lambda a=A, b=B: a @ b.T}, repeats)
        flops = mlp_flops(n)
        rates = [2 * n * n * 1024 / t for t in wall["gemm"]]
        ratios = [t / (flops / r) for t, r in zip(wall["ntk"], rates)]  # paired per repeat
        rate = med(rates)
        print(f"| {n} | {med(wall['ntk']):.3f} | {flops / 1e9:.1f} | {rate / 1e9:.0f} | "
              f"{flops / rate:.3f} | {med(ratios):.2f} |", flush=True)
        rows.append({"n": n, "ntk_s": wall["ntk"], "gemm_s": wall["gemm"], "flops": flops,
                     "rate_flops_per_s": rate, "floor_s": flops / rate,
                     "ratio_paired_median": med(ratios)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16:256,16:1000,32:256,32:1000")
    ap.add_argument("--mlp-sizes", default="1000,4000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wait-idle", type=float, default=float(os.environ.get("BENCH_WAIT_IDLE", 0)
                                                             or 0))
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3x16x16, n = 64; MLP n=250")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.mlp_sizes, args.repeats = "16:64", "250", 1
    QUIET["max_wait_s"] = args.wait_idle
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    print(f"# {cpu_model()}, {os.cpu_count()} cores, {args.threads} threads, torch "
          f"{torch.__version__}, {datetime.datetime.now().isoformat(timespec='minutes')}, "
          f"load average {load0[0]:.2f}")
    sizes = [tuple(int(v) for v in item.split(":")) for item in args.sizes.split(",") if item]
    res: dict[str, Any] = {"machine": cpu_model(), "threads": args.threads,
                           "torch": torch.__version__, "date": datetime.datetime.now().isoformat(),
                           "loadavg_start": load0}
    res["cnn"] = bench_cnn(sizes, args.repeats)  # type: ignore[arg-type]
    if args.mlp_sizes:
        res["mlp_floor"] = bench_mlp_floor([int(v) for v in args.mlp_sizes.split(",")],
                                           args.repeats)
    res["loadavg_end"] = os.getloadavg()
    res["quiet"] = {"max_wait_s": QUIET["max_wait_s"], "waited_s": QUIET["waited_s"],
                    "timed_calls": len(QUIET["busy"]),
                    "started_busy": sum(b > 0.1 for b in QUIET["busy"]),
                    "median_busy": med(QUIET["busy"]) if QUIET["busy"] else None}
    print(f"\nload average {load0[0]:.2f} -> {res['loadavg_end'][0]:.2f}; timed calls started "
          f"with the other processes busy (>10%): {res['quiet']['started_busy']} of "
          f"{res['quiet']['timed_calls']} (median busy {res['quiet']['median_busy']})")
    save_result(res, args.json, "ntk_rules", quick=args.quick)


if __name__ == "__main__":
    main()
