"""The NTK rules path (the new default) against the generic per-sample path, with its chunk from
the memory budget (new) and with the fixed chunk of 64 samples (the default before issue 13),
side by side in one process: same model, data and threads; medians of interleaved
repeats; ratios printed as a markdown table for docs/benchmarks.md.

Model (issue 13): Conv(3->64, 3x3, pad 1) ReLU Conv(64->64, 3x3, pad 1) ReLU global-average-pool
Linear(64->1), float32, standard (PyTorch) initialisation.

    python benchmarks/bench_ntk_rules.py [--sizes 16:256,16:1000,32:256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch
from machine import cpu_model
from torch import nn

from catapults.ntk import empirical_ntk


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16:256,16:1000,32:256")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3x16x16, n = 64, once")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.repeats = "16:64", 1
    rows = []
    torch.set_num_threads(args.threads)
    print(f"# {cpu_model()}, {args.threads} threads, torch {torch.__version__}, "
          f"{datetime.date.today()}")
    print("| input | n | default (auto) s | rules s | generic s | generic, chunk 64 s "
          "| chunk 64 / default | generic / rules | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for item in args.sizes.split(","):
        side, n = (int(v) for v in item.split(":"))
        torch.manual_seed(0)
        model = cnn()
        X = torch.randn(n, 3, side, side)
        methods = {
            "default": lambda m=model, x=X: empirical_ntk(m, x),
            "rules": lambda m=model, x=X: empirical_ntk(m, x, method="rules"),
            "generic": lambda m=model, x=X: empirical_ntk(m, x, method="jacobian"),
            "chunk64": lambda m=model, x=X: empirical_ntk(m, x, method="jacobian", chunk_size=64),
        }
        times: dict[str, list[float]] = {k: [] for k in methods}
        out = {k: fn() for k, fn in methods.items()}  # warm-up, untimed
        for _ in range(args.repeats):  # interleaved
            for k, fn in methods.items():
                t = time.perf_counter()
                out[k] = fn()
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = ((out["rules"] - out["generic"]).abs().max()
                / out["generic"].abs().max()).item()
        print(f"| 3x{side}x{side} | {n} | {med['default']:.2f} | {med['rules']:.2f} | "
              f"{med['generic']:.2f} | {med['chunk64']:.2f} | "
              f"{med['chunk64'] / med['default']:.2f} | {med['generic'] / med['rules']:.2f} | "
              f"{diff:.1e} |", flush=True)
        rows.append({"side": side, "n": n, "median_s": med, "max_rel_diff": diff})
    out_dir = Path(os.environ.get("BENCH_OUT", "runs/benchmarks"))
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "ntk_rules-quick.json" if args.quick else "ntk_rules.json"
    (out_dir / name).write_text(json.dumps({"machine": cpu_model(), "threads": args.threads,
                                            "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
