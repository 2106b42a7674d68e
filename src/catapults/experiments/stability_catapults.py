"""stability, part 3: catapults under heavy-ball momentum and Adam (issue 14; the seed's open
question on other optimisers).

The gd-single setting (x1*x2, a 2-layer ReLU MLP in the NTK parameterisation, full batch), with
the learning rate raised to ``1.5 ×`` the run's *own optimizer's* edge (the ``critical``
schedule, :func:`catapults.stability.critical_lr`: ``(1+β)·n·c/λ_max(K)`` for heavy ball with
``β = 0.9``, ``19·n·c/λ_max(J P⁻¹ Jᵀ)`` for Adam with ``β₁ = 0.9``, ``P`` frozen at the raise)
against the same seed at ``0.9 ×``. Momentum is raised at step 0; Adam trains ``ADAM_WARM``
steps at lr ``ADAM_WARM_LR`` first (its edge needs second moments).

Per seed: is there a catapult (a spike that recovers, events monitor; a divergence is none), how
much of it lies in the top eigendirection (``s = 1``) of the optimizer's kernel (``K`` for
momentum, whose edge is on ``K``; ``J P⁻¹ Jᵀ`` for Adam, :class:`PreconditionedSplit`) at the
largest probe loss inside it, and the final test loss and AGOP alignment against the ``0.9 ×``
run (paired by seed). Adam's kernel is formed every ``SPLIT_EVERY[size]`` steps (every step
below the full size); the step the claim needs is measured after the run from its remembered
parameters and ``P``, so the statistic is the one of measuring every step.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from catapults import metrics
from catapults.curvature.stability import (
    adam_inverse_preconditioner,
    adam_started,
    optimizer_edge,
    preconditioned_kernel,
)
from catapults.experiments.claims import Claim, make_claim
from catapults.experiments.common import (
    _cfg,
    _final_features,
    _plt,
    _read_events,
    _run,
    _save,
    _seeds,
    _synthetic,
    _synthetic_reference,
)
from catapults.experiments.stats import paired_differences
from catapults.training.callbacks import Callback, StepContext

ABOVE, BELOW = 1.5, 0.9
"""Multiples of the optimizer's edge (fixed before the runs, as gd-single's 1.5x and 0.9x)."""
ADAM_WARM_LR = 1e-3
ADAM_WARM = {"tiny": 10, "quick": 20, "full": 20}
OPTIMIZERS = ("momentum", "adam")
SPLIT_EVERY = {"tiny": 1, "quick": 1, "full": 10}
"""Adam's split in the top direction of ``J P⁻¹ Jᵀ`` is measured every this many steps (and at
the raise); at the full size (over 3 s a measurement, n = 1024, p = 10⁵) the other steps are
remembered and the one the claim needs, the first catapult's largest probe loss, is measured
after the run (:class:`PreconditionedSplit`): the same statistic as measuring every step."""


class PreconditionedSplit(Callback):
    """``ntk/L_top_preconditioned``: ``(u₁ᵀ r)²/(n·c)`` with ``u₁`` the top eigenvector of
    Adam's preconditioned kernel ``J P⁻¹ Jᵀ`` (``(n·c) × (n·c)``, ``P`` from the optimizer's
    state) on the step's batch (the full batch in GD-style runs) and ``r = f(X) − y``; every
    ``every`` steps once Adam has second moments. Beside the NTK monitor's ``ntk/L``. From step
    ``at`` on also ``ntk/L_top_preconditioned_fixed``: the same with ``u₁`` of step ``at`` kept
    (the kernel whose frozen ``P`` defines the edge at a raise there; the first step from ``at``
    on at which Adam has second moments is always measured).

    The kernel costs ``O((n·c)² p)`` a measurement (seconds at the full size), so with
    ``keep=True`` the steps in between are not measured but remembered: the parameters, ``P⁻¹``
    and the batch of each, in memory (two copies of the parameters a step), and
    :meth:`measure` computes the split of any of them after the run, with the same numbers as
    a measurement during the run (the catapult's peak, known only once the run is over)."""

    name = "preconditioned-split"

    def __init__(self, every: int = 1, at: int | None = None, keep: bool = False) -> None:
        self.every, self.at, self.keep = every, at, keep
        self.u_fixed: Tensor | None = None
        self.snapshots: dict[int, tuple[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor]] = {}
        self._model: torch.nn.Module | None = None

    def on_step_begin(self, state: StepContext, X: Tensor, y: Tensor,
                      record: dict[str, Any]) -> None:
        opt = state.optimizer
        if opt is None or optimizer_edge(opt)["kind"] != "adam" or not adam_started(opt):
            return
        first_fixed = self.at is not None and state.step >= self.at and self.u_fixed is None
        if not (state.step % self.every == 0 or first_fixed or self.keep):
            return
        X, y = X.to(state.device, state.dtype), y.to(state.device, state.dtype)
        inv = adam_inverse_preconditioner(state.model, opt)
        if state.step % self.every == 0 or first_fixed:
            record.update(self._split(state.model, X, y, inv, state.step))
        else:
            if self._model is None:
                self._model = copy.deepcopy(state.model)
            params = {k: v.detach().clone() for k, v in state.model.named_parameters()}
            self.snapshots[state.step] = (params, inv, X, y)

    def measure(self, step: int) -> dict[str, float]:
        """The split of a step that was remembered and not measured (``keep=True``): the
        records a measurement at that step would have written."""
        params, inv, X, y = self.snapshots[step]
        assert self._model is not None
        with torch.no_grad():
            for k, v in self._model.named_parameters():
                v.copy_(params[k])
        return self._split(self._model, X, y, inv, step)

    def _split(self, model: torch.nn.Module, X: Tensor, y: Tensor, inv: dict[str, Tensor],
               step: int) -> dict[str, float]:
        Kp = preconditioned_kernel(model, X, inverse_preconditioner=inv)
        _, vecs = torch.linalg.eigh(Kp.double())
        with torch.no_grad():
            r = (model(X).reshape(X.shape[0], -1) - y.reshape(X.shape[0], -1))
        r = r.reshape(-1).double()
        out = {metrics.NTK_L_TOP_PRECONDITIONED: float((vecs[:, -1] @ r) ** 2) / r.numel()}
        if self.at is not None and step >= self.at:
            if self.u_fixed is None:
                self.u_fixed = vecs[:, -1].clone()
            out[metrics.NTK_L_TOP_PRECONDITIONED_FIXED] = (float((self.u_fixed @ r) ** 2)
                                                            / r.numel())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"u_fixed": self.u_fixed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.u_fixed = state.get("u_fixed")


def _run_one(out: Path, size: str, seed: int, opt: str, mult: float) -> dict[str, Any]:
    data = _synthetic(size, seed)
    raise_at = 0 if opt == "momentum" else ADAM_WARM[size]
    train: dict[str, Any] = {
        "optimizer": opt, "lr": 1.0 if opt == "momentum" else ADAM_WARM_LR, "seed": seed,
        "steps": {"tiny": 80, "quick": 200, "full": 300}[size], "test_every": 50,
        "schedule": {"kind": "critical", "milestones": [raise_at], "values": [mult]}}
    if opt == "momentum":
        train["momentum"] = 0.9
    else:
        train["betas"] = [0.9, 0.999]
    cfg = _cfg(data=data, model={"width": {"tiny": 128, "quick": 256, "full": 1024}[size],
                                 "depth": 2},
               train=train, monitor={"ntk": {"enabled": True, "every": 1, "k": 5},
                                     "events": {"enabled": True}},
               output={"figures": False, "checkpoint": False})
    every = SPLIT_EVERY[size]
    split = (PreconditionedSplit(every=every, at=raise_at, keep=every > 1) if opt == "adam"
             else None)
    res = _run(cfg, out / "runs" / f"{opt}-{mult:g}x-seed{seed}",
               callbacks=None if split is None else [split])
    events = _read_events(res)
    caps = [e for e in events if e.get("kind", "catapult") == "catapult" and e.get("recovered")]
    G_ref, X_ref = _synthetic_reference(data)
    row: dict[str, Any] = {"optimizer": opt, "multiple": mult, "seed": seed,
                           "status": res.status, "raise_step": raise_at,
                           "lr": next((r["lr"] for r in res.history if r["step"] == raise_at),
                                      None),
                           "events": len(events), "catapults": len(caps),
                           "final_train_loss": res.summary.get("final_train_loss"),
                           "final_test_loss": res.summary.get("final_test_loss"),
                           **_final_features(res, G_ref, X_ref)}
    row["catapult"] = float(res.status == "completed" and bool(caps))
    row["top_share"] = row["top_share_K"] = row["top_share_fixed_at_raise"] = None
    row["split_measured_after_run"] = None if split is None else False
    if caps and res.status == "completed":
        ev = caps[0]
        inside = [r for r in res.history if ev["start"] <= r["step"] <= ev["end"]
                  and r.get(metrics.NTK_L) is not None and math.isfinite(r[metrics.NTK_L])
                  and r[metrics.NTK_L] > 0]
        if inside:
            peak = max(inside, key=lambda r: r[metrics.NTK_L])
            if (split is not None and metrics.NTK_L_TOP_PRECONDITIONED not in peak
                    and peak["step"] in split.snapshots):  # not measured in the run: now
                peak.update(split.measure(peak["step"]))
                row["split_measured_after_run"] = True
            row["top_share_K"] = peak[metrics.NTK_L_TOP_BY_S][0] / peak[metrics.NTK_L]
            top = (peak[metrics.NTK_L_TOP_BY_S][0] if opt == "momentum"
                   else peak.get(metrics.NTK_L_TOP_PRECONDITIONED))
            row["top_share"] = None if top is None else top / peak[metrics.NTK_L]
            fixed = peak.get(metrics.NTK_L_TOP_PRECONDITIONED_FIXED)
            row["top_share_fixed_at_raise"] = (None if fixed is None
                                               else fixed / peak[metrics.NTK_L])
            row["catapult_start"], row["catapult_peak_step"] = ev["start"], peak["step"]
    if split is not None:
        split.snapshots.clear()
    curve = [{"optimizer": opt, "multiple": mult, "step": r["step"], "loss": r["loss"],
              "L_top_1": (r[metrics.NTK_L_TOP_BY_S][0] if opt == "momentum" and
                          r.get(metrics.NTK_L_TOP_BY_S) else
                          r.get(metrics.NTK_L_TOP_PRECONDITIONED))}
             for r in res.history] if seed == 0 else []
    return {"row": row, "curve": curve}


def exp_catapults(out: Path, size: str) -> tuple[list[Claim], list[dict[str, Any]], Path]:
    """Part 3 (module docstring): claims per optimizer, one row per run, the figure."""
    seeds = _seeds(size)
    claims, rows, curves = [], [], []
    for opt in OPTIMIZERS:
        runs = {(m, s): _run_one(out, size, s, opt, m) for m in (ABOVE, BELOW) for s in seeds}
        up = [runs[ABOVE, s]["row"] for s in seeds]
        down = [runs[BELOW, s]["row"] for s in seeds]
        rows += up + down
        curves += [runs[m, seeds[0]]["curve"] for m in (ABOVE, BELOW)]
        kernel = ("K (momentum's edge is on K)" if opt == "momentum"
                  else "J P^-1 J^T (Adam's preconditioned kernel)")
        control = f"the same seed at {BELOW}x the edge"

        def ok(r: dict[str, Any]) -> bool:
            return r["status"] == "completed"

        test = paired_differences([d["final_test_loss"] if ok(d) else None for d in down],
                                  [u["final_test_loss"] if ok(u) else None for u in up])
        align = paired_differences([u["agop_alignment"] for u in up],
                                   [d["agop_alignment"] for d in down])
        name = f"catapult ({opt})"
        why = (None if any(u["catapult"] for u in up) else
               f"no run at {ABOVE}x the edge completed with a catapult (statuses: "
               + ", ".join(u["status"] for u in up) + ")")
        claims += [
            make_claim(f"{opt}:stability/catapult-above-edge", name,
                       f"1 if the run at {ABOVE}x the edge completes with a catapult, else 0 "
                       "(a divergence is none)", [u["catapult"] for u in up],
                       statuses=[u["status"] for u in up], catapults=[u["catapults"] for u in up]),
            make_claim(f"{opt}:stability/none-below-edge", name,
                       f"events (catapults or divergence) detected at {BELOW}x the edge",
                       [float(d["events"]) for d in down], control=control),
            make_claim(f"{opt}:stability/top-share-above-edge", name,
                       "L_top / L (s = 1) at the largest probe loss of the first catapult",
                       [u["top_share"] for u in up], reason=why,
                       basis=f"the top eigenvector of {kernel} of each step",
                       top_share_plain_K=[u["top_share_K"] for u in up],
                       top_share_fixed_at_raise=[u["top_share_fixed_at_raise"] for u in up]),
            make_claim(f"{opt}:stability/test-loss-gain-vs-below-edge", name,
                       f"final test loss at {BELOW}x - at {ABOVE}x the edge (paired by seed)",
                       test, control=control, reason=why),
            make_claim(f"{opt}:stability/alignment-gain-vs-below-edge", name,
                       f"AGOP alignment at {ABOVE}x - at {BELOW}x the edge (paired by seed)",
                       align, control=control, reason=why),
        ]
    return claims, rows, _fig_catapults(curves, out / "stability-catapults.png")


def _fig_catapults(curves: list[list[dict[str, Any]]], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, len(OPTIMIZERS), figsize=(12, 4.2))
    for ax, opt in zip(axes, OPTIMIZERS):
        for curve in curves:
            if not curve or curve[0]["optimizer"] != opt:
                continue
            mult = curve[0]["multiple"]
            color = "C3" if mult == ABOVE else "C0"
            steps = [r["step"] for r in curve if math.isfinite(r["loss"])]
            ax.plot(steps, [max(r["loss"], 1e-16) for r in curve if math.isfinite(r["loss"])],
                    color=color, label=f"L at {mult}x the edge")
            top = [(r["step"], r["L_top_1"]) for r in curve if r["L_top_1"] is not None
                   and math.isfinite(r["L_top_1"])]
            if mult == ABOVE and top:
                ax.plot([s for s, _ in top], [max(v, 1e-16) for _, v in top], ":", color=color,
                        label="L_top (s = 1) at 1.5x")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_title(f"{opt}: lr raised to a multiple of its own edge (seed 0)")
        ax.legend(fontsize=8)
    return _save(fig, path)
