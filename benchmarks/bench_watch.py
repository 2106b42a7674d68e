"""Benchmark: the overhead of :func:`catapults.watch` over a plain training step, side by side.

One process, one model, the same data and threads; every variant trains the same number of
steps from the same initial weights, and the variants are interleaved (one repeat of each in
turn, in alternating order), medians over the repeats. Reported: the median time of a step
(forward, MSE, backward, optimizer update, and the ``mon.step`` call) and its ratio to the
plain step.

Settings (the paper's synthetic task, as in ``examples/``): ``MLP(d=20, 1, width=1024,
depth=2)`` (one hidden layer, p = 21.5k) and ``depth=3`` (two, p = 1.07M), NTK
parameterisation; SGD with batch size 32 on n = 256 points, and
full-batch GD on the same n = 256 points; float32, ``torch.set_num_threads(2)``.

Variants:

- ``plain``: the loop without a monitor.
- ``events only``: ``watch(..., ntk=False, batch_kernel=False)``: the loss, lr and row
  bookkeeping, the metrics file and the event detector.
- ``ntk every 10``: ``watch(model, opt, probe=(X, y), every=10, k=5, batch_kernel=False)``:
  the top-5 NTK eigenpairs, η_crit and the loss split on the probe every 10 steps.
- ``ntk every 10 + batch``: as above plus ``λ_max(K_B)``, ``η_crit(B)`` of every mini-batch
  (the default for mini-batch steps; SGD only).
- ``ntk every step``: ``every=1`` (the most a user can ask for).

Run: ``python benchmarks/bench_watch.py [--quick] [--out docs/benchmarks_watch.md]``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import cpu_model

import catapults
from catapults.models import MLP

VARIANTS = {
    "plain": None,
    "events only": {"ntk": False, "batch_kernel": False},
    "ntk every 10": {"every": 10, "batch_kernel": False},
    "ntk every 10 + batch": {"every": 10, "batch_kernel": True},
    "ntk every step": {"every": 1, "batch_kernel": False},
}


def train(model, X, y, *, steps, batch_size, lr, options, out):
    """``steps`` updates of ``model`` (a fresh copy per call); the wall time per step."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    mon = None
    if options is not None:
        mon = catapults.watch(model, opt, probe=(X, y), out=out, k=5, figures=False,
                              overwrite=True, **options)
    full = batch_size >= X.shape[0]
    t0 = time.perf_counter()
    for _ in range(steps):
        if full:
            xb, yb = X, y
        else:
            idx = torch.randint(0, X.shape[0], (batch_size,), generator=gen)
            xb, yb = X[idx], y[idx]
        loss = 0.5 * F.mse_loss(model(xb).squeeze(-1), yb)
        if mon is not None:
            mon.step(loss, batch=None if full else (xb, yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - t0
    if mon is not None:
        mon.close()
    return elapsed / steps


MODELS = {"MLP 20-1024-1 (p = 21.5k)": 2, "MLP 20-1024-1024-1 (p = 1.07M)": 3}


def bench(setting, *, depth, steps, repeats, tmp):
    torch.manual_seed(0)
    X = torch.randn(256, 20)
    y = X[:, 0] * X[:, 1]
    model = MLP(20, 1, width=1024, depth=depth)
    batch = setting["batch_size"]
    names = [n for n in VARIANTS if not ("batch" in n and batch >= X.shape[0])]
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            out = None if VARIANTS[name] is None else str(Path(tmp) / name.replace(" ", "_"))
            times[name].append(train(model, X, y, steps=steps, batch_size=batch,
                                     lr=setting["lr"], options=VARIANTS[name], out=out))
    med = {name: statistics.median(v) for name, v in times.items()}
    return {name: {"step_ms": 1e3 * med[name], "ratio": med[name] / med["plain"],
                   "all_ms": [1e3 * t for t in times[name]]} for name in names}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke run)")
    p.add_argument("--out", help="also write the markdown table to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    steps, repeats = (20, 1) if args.quick else (200, 7)
    settings = {"SGD, batch 32": {"batch_size": 32, "lr": 0.5},
                "GD, n = 256": {"batch_size": 256, "lr": 0.5}}
    t_start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mlabel, depth in MODELS.items():
            for slabel, setting in settings.items():
                results[f"{mlabel}, {slabel}"] = bench(setting, depth=depth, steps=steps,
                                                       repeats=repeats, tmp=tmp)
    lines = [
        f"- **Machine:** {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}.",
        "- **Models:** MLP(20, 1, width=1024, depth=2 and 3), NTK parameterisation; probe "
        "n = 256 (the training set).",
        f"- **Date:** {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {steps} steps "
        f"per variant, {repeats} interleaved repeats (medians); total "
        f"{time.perf_counter() - t_start:.0f} s.",
        "",
        "| setting | variant | ms / step | ratio to plain |",
        "|---|---|---:|---:|",
    ]
    for label, res in results.items():
        for name, r in res.items():
            lines.append(f"| {label} | {name} | {r['step_ms']:.2f} | {r['ratio']:.2f}× |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    bench_out = os.environ.get("BENCH_OUT")
    if bench_out:
        name = "bench_watch-quick.json" if args.quick else "bench_watch.json"
        Path(bench_out).mkdir(parents=True, exist_ok=True)
        (Path(bench_out) / name).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
