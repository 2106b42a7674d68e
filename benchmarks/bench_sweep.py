"""Benchmark: sweep throughput, 2 workers x 1 thread against 1 worker x 2 threads.

One 12-trial sweep of small runs (synthetic x1*x2, d = 20, n = 512, 2-layer ReLU NTK net of
width 256, SGD, 1500 steps, train and test loss every step, catapult detection on, no
figures or checkpoints; 3 batch sizes x 4 seeds) is run end to end with :func:`run_sweep` on the
local backend in each configuration, into a fresh directory each time:

- ``2 workers x 1 thread``: a pool of two ``spawn`` worker processes, one torch thread each
  (the time includes starting the workers and importing torch in them);
- ``1 worker x 2 threads``: the trials one after another in this process, two torch threads.

The configurations alternate (``--repeats`` rounds); the median wall time of each is reported
as trials/s, and the ratio. Run: ``python benchmarks/bench_sweep.py [--repeats 2]
[--out docs/benchmarks_sweep.md]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_model

from catapults.sweeps import cpu_count, load_sweep, run_sweep

SWEEP = {
    "base": {
        "data": {"name": "synthetic", "d": 20, "target": "x1*x2", "n_train": 512,
                 "n_test": 512},
        "model": {"depth": 2, "width": 256, "activation": "relu", "parameterization": "ntk"},
        "train": {"optimizer": "sgd", "lr": 2.0, "batch_size": 32, "steps": 1500,
                  "eval_every": 1},
        "monitor": {"events": {"enabled": True}},
        "output": {"figures": False, "checkpoint": False},
    },
    "grid": {"train.batch_size": [16, 32, 64]},
    "seeds": [0, 1, 2, 3],
    "metrics": ["final_test_loss", "monitors.events.count"],
}
CONFIGS = {"2 workers x 1 thread": (2, 1), "1 worker x 2 threads": (1, 2)}


def machine() -> str:
    cpu = cpu_model()
    return (f"{cpu}, {cpu_count()} cores available, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def one(workers: int, threads: int, root: Path, tag: str) -> float:
    sweep = load_sweep(SWEEP, threads=threads)
    t0 = time.perf_counter()
    res = run_sweep(sweep, root / tag, workers=workers, threads=threads, progress=False,
                    report=False)
    wall = time.perf_counter() - t0
    assert res.ran == len(sweep.trials) == 12, res.counts
    assert res.counts.get("failed", 0) == 0, res.counts
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as Markdown here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one round of 300-step trials (timings not comparable)")
    args = ap.parse_args(argv)
    if args.quick:
        SWEEP["base"]["train"]["steps"] = 300
        args.repeats = 1
    n = len(load_sweep(SWEEP).trials)
    walls: dict[str, list[float]] = {k: [] for k in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for r in range(args.repeats):
            for name, (workers, threads) in CONFIGS.items():
                w = one(workers, threads, Path(tmp), f"{r}-{workers}x{threads}")
                walls[name].append(w)
                print(f"round {r + 1}: {name}: {w:.2f} s ({n / w:.3f} trials/s)", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    a, b = med["2 workers x 1 thread"], med["1 worker x 2 threads"]
    lines = [
        "## Sweep throughput: 2 workers x 1 thread vs 1 worker x 2 threads",
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Command: `python benchmarks/bench_sweep.py --repeats {args.repeats}`",
        "- Workload: one sweep of 12 small runs (synthetic x1*x2, d = 20, n = 512, 2-layer ReLU "
        "NTK net, width 256, SGD lr 2, 1500 steps with train and test loss every step, "
        "batch sizes 16/32/64 x 4 seeds, catapult detection on, no figures/checkpoints), "
        "run end to end with `run_sweep` (local "
        "backend) into a fresh directory; the two configurations alternate, "
        f"{args.repeats} round(s), median wall time.",
        "- `2 workers x 1 thread`: two `spawn` worker processes, 1 torch thread each (includes "
        "starting the workers and importing torch in them); `1 worker x 2 threads`: trials one "
        "after another in the sweep's own process, 2 torch threads.",
        "",
        "| configuration | wall time (s), each round | median (s) | trials/s |",
        "|---|---|---|---|",
    ]
    for name in CONFIGS:
        each = ", ".join(f"{w:.2f}" for w in walls[name])
        lines.append(f"| {name} | {each} | {med[name]:.2f} | {n / med[name]:.3f} |")
    lines += ["", f"Throughput ratio (2 workers x 1 thread) / (1 worker x 2 threads): "
              f"**{b / a:.2f}x**."]
    if b > a:
        lines.append("Small runs use two processes with one thread each better than one process "
                     "with two threads (torch's intra-op threading gains little on small "
                     "matrices), which is why the local backend defaults to one worker per core "
                     "and cores // workers threads per worker.")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
