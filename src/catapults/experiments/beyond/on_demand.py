"""beyond/on-demand: catapults placed deliberately (the seed's check 3, open question 4).

Full-batch GD, the same number of steps under five learning-rate schedules, all starting from
the same network (one per seed and architecture) and set from its initial critical rate
``η₀ = η_crit(θ₀)``, for each architecture of :data:`ARCHS`: the MLP on the synthetic task
(claims ``beyond/...``) and a CNN on digits 3 vs 8 (claims ``cnn:beyond/...``, same thresholds;
no true AGOP there, so test loss only):

- ``constant``: ``0.9 η₀`` throughout (no catapult);
- ``step``: ``0.9 η₀``, then ``1.5x`` the previous rate at 1/4, 1/2 and 3/4 of the steps (fixed
  values: whether a raise lands above the critical rate of the moment is left to chance);
- ``cosine``: from ``1.3 η₀`` down to 0 (a catapult at the start, then decay);
- ``on-demand``: :class:`catapults.training.CatapultOnDemand` (raise to ``1.3 η_crit`` when
  calm, at most 3 catapults, settle below the critical rate after each, guard in between);
- ``guard``: the ``step`` schedule clipped by :class:`catapults.training.CriticalGuard` at
  ``0.9 η_crit`` (re-measured every 5 steps): the reverse, catapults prevented.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from catapults.curvature.spectrum import critical_lr
from catapults.experiments.beyond.common import (
    final_measures,
    gd,
    image_task_and_model,
    mlp,
    synthetic_task,
)
from catapults.experiments.claims import Claim, make_claim
from catapults.experiments.common import _plt, _save, _seeds
from catapults.experiments.stats import effect_size, paired_differences
from catapults.training.controllers import CatapultOnDemand, CriticalGuard

SCHEDULES = ("constant", "step", "cosine", "on-demand", "guard")
ARCHS = ("mlp", "cnn")
"""The architectures the schedules are compared on (the MLP first: its claims keep their ids)."""


def _steps(size: str) -> int:
    return {"tiny": 160, "quick": 400, "full": 800}[size]


def _schedule(name: str, model, task, steps: int, opt):
    """``lr_of(t, loss)`` for the schedule ``name`` and the controller object (or None), the
    controllers writing to ``opt`` (the optimizer of the GD loop)."""
    eta0 = critical_lr(model, task.X)

    def step_lr(t: int) -> float:
        return 0.9 * eta0 * 1.5 ** sum(t >= steps * q / 4 for q in (1, 2, 3))

    if name == "constant":
        return (lambda t, loss: 0.9 * eta0), None
    if name == "step":
        return (lambda t, loss: step_lr(t)), None
    if name == "cosine":
        return (lambda t, loss: 1.3 * eta0 * 0.5 * (1 + math.cos(math.pi * t / steps))), None
    if name == "on-demand":
        ctl = CatapultOnDemand(opt, model, task.X, alpha=1.3, gap=max(steps // 10, 20),
                               max_catapults=3)
        state = {"lr": ctl.lr}

        def on_demand(t: int, loss: float) -> float:
            if t > 0:
                state["lr"] = ctl.step(loss)
            return state["lr"]

        return on_demand, ctl
    guard = CriticalGuard(opt, model, task.X, margin=0.9, every=5)
    return (lambda t, loss: guard.step(step_lr(t))), guard


def _task_and_model(arch: str, size: str, seed: int):
    if arch == "mlp":
        task = synthetic_task(size, seed)
        return task, mlp(task, width={"tiny": 256, "quick": 512, "full": 1024}[size], seed=seed)
    return image_task_and_model(arch, size=size, seed=seed,
                                width={"tiny": 8, "quick": 16, "full": 32}[size])


def _seed_runs(size: str, seed: int, arch: str = "mlp"
               ) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    task, initial = _task_and_model(arch, size, seed)
    steps = _steps(size)
    rows, curves = [], {}
    for name in SCHEDULES:
        model = copy.deepcopy(initial)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        lr_of, ctl = _schedule(name, model, task, steps, opt)
        losses, lrs = gd(model, task, steps, lr_of, optimizer=opt)
        row = {"arch": arch, "seed": seed, "schedule": name,
               **final_measures(model, task, losses),
               "final_lr": lrs[-1] if lrs else None}
        if isinstance(ctl, CatapultOnDemand):
            row["raises"] = len(ctl.raises)
        if isinstance(ctl, CriticalGuard):
            row["clipped_steps"] = ctl.clipped
        rows.append(row)
        curves[name] = losses
        curves[f"{name}/lr"] = lrs
    return rows, curves


def on_demand_claims(rows: list[dict[str, Any]]) -> list[Claim]:
    """The claims of each architecture in ``rows`` (``arch``; ``mlp`` when absent), the MLP's
    as ``beyond/...`` and another's as ``ARCH:beyond/...``."""
    archs = list(dict.fromkeys(r.get("arch", "mlp") for r in rows))
    return [c for a in archs for c in _arch_claims(
        [r for r in rows if r.get("arch", "mlp") == a], "" if a == "mlp" else f"{a}:")]


def _arch_claims(rows: list[dict[str, Any]], prefix: str) -> list[Claim]:
    by: dict[tuple[int, str], dict[str, Any]] = {(r["seed"], r["schedule"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})

    def val(seed: int, name: str, key: str):
        r = by.get((seed, name))
        return None if r is None or r["status"] != "completed" else r.get(key)

    placed = []
    for s in seeds:
        raises, cats = val(s, "on-demand", "raises"), val(s, "on-demand", "catapults")
        placed.append(cats / raises if raises else None)
    claims = [
        make_claim(f"{prefix}beyond/on-demand-placed", "catapults on demand",
                   "catapults detected / raises made by the on-demand controller", placed),
        make_claim(f"{prefix}beyond/guard-no-catapults", "catapults prevented",
                   "catapults detected under the step schedule clipped at 0.9 eta_crit",
                   [val(s, "guard", "catapults") for s in seeds],
                   control="the same step schedule unguarded",
                   unguarded=[val(s, "step", "catapults") for s in seeds]),
    ]
    for other in ("constant", "step", "cosine"):
        d = paired_differences([val(s, other, "final_test_loss") for s in seeds],
                               [val(s, "on-demand", "final_test_loss") for s in seeds])
        claims.append(make_claim(
            f"{prefix}beyond/on-demand-test-gain-vs-{other}", "catapults on demand",
            f"test loss under the {other} schedule - under on-demand (same steps, paired by "
            "seed)", d, control=f"the {other} schedule, same network and steps",
            d_z=effect_size(d)))
    return claims


def fig_on_demand(rows, curves, path: Path) -> Path:
    plt = _plt()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.2))
    for name in SCHEDULES:
        a.plot(curves[name], lw=0.9, label=name)
        b.plot(curves[f"{name}/lr"], lw=0.9, label=name)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("training loss (mean MSE)")
    a.set_title("Schedules with the same steps (MLP, seed 0)")
    a.legend(fontsize=8)
    b.set_xlabel("step")
    b.set_ylabel("learning rate")
    b.set_ylim(bottom=0)
    b.set_title("Learning rates")
    archs = list(dict.fromkeys(r.get("arch", "mlp") for r in rows))
    for j, arch in enumerate(archs):
        for i, name in enumerate(SCHEDULES):
            pts = [r["final_test_loss"] for r in rows if r.get("arch", "mlp") == arch
                   and r["schedule"] == name and r["final_test_loss"] is not None]
            c.plot([i + 0.15 * j] * len(pts), pts, "os^"[j % 3], color=f"C{j}", alpha=0.7,
                   label=arch if i == 0 else None)
    c.set_xticks(range(len(SCHEDULES)), SCHEDULES)
    c.set_yscale("log")
    c.set_ylabel("final test loss")
    c.set_title("Test loss per schedule (every seed)")
    c.legend(fontsize=8, title="architecture")
    return _save(fig, path)


def exp_on_demand(out: Path, size: str) -> tuple[list[Claim], list[dict[str, Any]], Path]:
    rows, first = [], None
    for arch in ARCHS:
        for seed in _seeds(size):
            r, curves = _seed_runs(size, seed, arch)
            rows += r
            first = first or curves
    return on_demand_claims(rows), rows, fig_on_demand(rows, first, out / "on-demand.png")
