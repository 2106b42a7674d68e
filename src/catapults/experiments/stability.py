"""stability: the optimizer's own edge in training (issue 14), in four parts.

1. *Edge of stability* (Cohen et al. 2021): full-batch GD at several fixed learning rates on a
   tanh MLP in the *standard* parameterisation (where progressive sharpening happens), the
   sharpness monitor measuring ``λ_max(H)`` of the training loss (the probe is the whole training
   set) and its Gauss-Newton part ``λ_max(H_GN) = 2 λ_max(K)/(n·c)`` beside it. Statistic, fixed
   before the runs: per run, the first measurement where ``η·λ_max(H) ≥ 1.8``, then the median of
   ``η·λ_max(H)`` from there to the end; per seed, the share of the lrs that reach 1.8 and the
   mean of the medians of those that do.
2. *Adam* (Cohen et al. 2022), ``β₁ = 0.9``: the same with the preconditioned sharpness
   ``λ_max(P⁻¹H)`` against ``38/η`` (``η·λ_max(P⁻¹H)/38`` reaching 0.9, then its median; the
   measurement at step 0, before Adam has second moments, is left out).
3. *Catapults under momentum and Adam* (:mod:`.stability_catapults`).
4. *SGD batch sharpness* (Andreyev & Beneventano): the runs of ``sgd-batch-size`` (same task,
   model, lr and steps) at a few batch sizes; ``η ×`` the batch sharpness
   ``E_B[g_Bᵀ H_B g_B / ‖g_B‖²]`` of the trained net (Monte Carlo, 95% interval) against 2.

Learning rates are multiples of the initial network's critical rate (the ``critical`` schedule
at step 0: ``η·λ_max(H_GN(θ₀)) = 2m``) for GD and SGD, fixed values for Adam.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch

from catapults import metrics
from catapults.config import config_from_dict
from catapults.data import make_dataset
from catapults.experiments.claims import Claim, ExperimentResult, make_claim
from catapults.experiments.common import _cfg, _plt, _run, _save, _seeds, _synthetic, _write_csv
from catapults.experiments.sgd_batch_size import LR_MULTIPLE
from catapults.experiments.stability_catapults import exp_catapults
from catapults.stability import batch_sharpness, hessian_top_eigenpairs

EOS_REACH, ADAM_REACH = 1.8, 0.9
"""The level (of ``η·λ_max(H)``; of ``η·λ_max(P⁻¹H)/38``) whose first crossing starts the
window of the hover statistic (fixed before the runs)."""

EOS_MULTIPLES = {"tiny": [0.17, 0.25], "quick": [0.12, 0.17, 0.25],
                 "full": [0.08, 0.12, 0.17, 0.25]}
"""GD: ``η = m ×`` the critical rate of the initial network (``η·λ_max(H_GN) = 2m`` at step 0)."""
ADAM_LRS = {"tiny": [0.01, 0.03], "quick": [0.003, 0.01], "full": [0.001, 0.003, 0.01]}
BATCHES = {"tiny": [4, 16], "quick": [4, 16, 64], "full": [4, 16, 64]}
"""The batch sizes of ``sgd-batch-size`` whose batch sharpness is measured."""


def _eos_setting(size: str, seed: int) -> tuple[dict[str, Any], dict[str, Any], int, int]:
    """(data, model, steps, measure every) of parts 1 and 2: x1*x2 in d = 20 (10 tiny), a
    3-layer tanh MLP with biases, standard parameterisation."""
    data = {"name": "synthetic", "target": "x1*x2", "d": 10 if size == "tiny" else 20,
            "n_train": {"tiny": 64, "quick": 128, "full": 256}[size],
            "n_test": {"tiny": 200, "quick": 1000, "full": 2000}[size], "seed": seed}
    model = {"width": {"tiny": 32, "quick": 64, "full": 128}[size], "depth": 3,
             "activation": "tanh", "bias": True, "parameterization": "standard"}
    return (data, model, {"tiny": 250, "quick": 400, "full": 1500}[size],
            {"tiny": 25, "quick": 25, "full": 10}[size])


def _hover(series: list[tuple[int, float]], reach: float) -> tuple[int | None, float | None]:
    """(first step whose value is at least ``reach``, median of the values from there on);
    ``(None, None)`` when it never gets there. ``series``: ``(step, value)`` in step order."""
    t0 = next((s for s, v in series if v >= reach), None)
    if t0 is None:
        return None, None
    return t0, statistics.median(v for s, v in series if s >= t0)


def _sharp_run(out: Path, size: str, seed: int, kind: str, level: float) -> dict[str, Any]:
    """One GD (``kind='gd'``, ``level`` a multiple of the critical rate) or Adam (``level`` the
    lr) run with the sharpness monitor; its measurement rows and hover statistics."""
    data, model, steps, every = _eos_setting(size, seed)
    train: dict[str, Any] = {"optimizer": kind, "steps": steps, "seed": seed, "test_every": 100}
    if kind == "gd":
        train.update(lr=1.0, schedule={"kind": "critical", "milestones": [0], "values": [level]})
    else:
        train.update(lr=level, betas=[0.9, 0.999])
    cfg = _cfg(data=data, model=model, train=train,
               monitor={"sharpness": {"enabled": True, "every": every},
                        "events": {"enabled": True}},
               output={"figures": False, "checkpoint": False})
    res = _run(cfg, out / "runs" / f"{kind}-{level:g}-seed{seed}")
    rows = []
    for r in res.history:
        if metrics.SHARPNESS_HESSIAN not in r or not math.isfinite(r["loss"]):
            continue
        lr = r["lr"]
        row = {"kind": kind, "level": level, "seed": seed, "step": r["step"], "lr": lr,
               "loss": r["loss"], "lambda_hessian": r[metrics.SHARPNESS_HESSIAN],
               "lambda_gn": r[metrics.SHARPNESS_GN], "threshold": r[metrics.SHARPNESS_THRESHOLD],
               "eta_lambda_hessian": lr * r[metrics.SHARPNESS_HESSIAN],
               "eta_lambda_gn": lr * r[metrics.SHARPNESS_GN]}
        if kind == "adam":  # none at step 0: no second moments yet
            pre = r.get(metrics.SHARPNESS_PRECONDITIONED)
            row["lambda_preconditioned"] = pre
            row["eta_lambda_preconditioned_over_38"] = None if pre is None else lr * pre / 38
        rows.append(row)
    key, reach = (("eta_lambda_hessian", EOS_REACH) if kind == "gd"
                  else ("eta_lambda_preconditioned_over_38", ADAM_REACH))
    # Adam's measurement at step 0 has no second moments (no P): not its dynamics
    series = [(r["step"], r[key]) for r in rows
              if (kind == "gd" or r["step"] > 0) and r[key] is not None]
    # a run that diverged did not stay at the edge: it counts as not reaching it
    t0, med = _hover(series, reach) if res.status == "completed" else (None, None)
    loss_at = {r["step"]: r["loss"] for r in res.history}
    final = res.history[-1]["loss"] if res.history else None
    ev = res.summary.get("monitors", {}).get("events", {}) or {}
    gn_med = (statistics.median(r["eta_lambda_gn"] for r in rows if r["step"] >= t0)
              if t0 is not None and kind == "gd" else None)
    stats = {"kind": kind, "level": level, "seed": seed, "status": res.status,
             "lr": rows[0]["lr"] if rows else None, "reached": float(t0 is not None),
             "reach_step": t0, "hover_median": med, "gn_hover_median": gn_med,
             "loss_ratio": (final / loss_at[t0] if t0 is not None and res.status == "completed"
                            and loss_at.get(t0) else None),
             "final_train_loss": res.summary.get("final_train_loss"),
             "final_test_loss": res.summary.get("final_test_loss"),
             # the detector at the edge of stability: every catapult at a fixed lr is
             # spontaneous (no lr change explains it); oscillation episodes counted apart
             "catapults": ev.get("count"),
             "spontaneous": (ev.get("causes") or {}).get("spontaneous"),
             "oscillations": ev.get("oscillations")}
    return {"rows": rows, "stats": stats}


def _per_seed(stats: list[dict[str, Any]], key: str, seeds: list[int]) -> list[float | None]:
    """The mean of ``key`` over the runs of each seed that have it (None: none has)."""
    out = []
    for seed in seeds:
        vals = [s[key] for s in stats if s["seed"] == seed and s[key] is not None]
        out.append(statistics.fmean(vals) if vals else None)
    return out


def _edge_part(out: Path, size: str, kind: str) -> tuple[list[Claim], list[dict], list[dict]]:
    """Parts 1 (``gd``) and 2 (``adam``): their runs, claims and tables."""
    seeds = _seeds(size)
    levels = EOS_MULTIPLES[size] if kind == "gd" else ADAM_LRS[size]
    per = [_sharp_run(out, size, seed, kind, lv) for seed in seeds for lv in levels]
    st = [p["stats"] for p in per]
    if kind == "gd":
        what, cid = f"eta * lambda_max(H), from its first reach of {EOS_REACH}", "eos"
        claim = "edge of stability (GD)"
    else:
        what = f"eta * lambda_max(P^-1 H) / 38, from its first reach of {ADAM_REACH} (step > 0)"
        cid, claim = "adam", "edge of stability (Adam)"
    detail = {"levels": levels, "reach_steps": [s["reach_step"] for s in st]}
    if kind == "gd":
        detail["gn_hover_median"] = _per_seed(st, "gn_hover_median", seeds)
    hover = _per_seed(st, "hover_median", seeds)
    claims = [
        make_claim(f"stability/{cid}-reaches-edge", claim,
                   f"share of the lrs at which {what.split(',')[0]} reaches "
                   f"{EOS_REACH if kind == 'gd' else ADAM_REACH}",
                   _per_seed(st, "reached", seeds), **detail),
        make_claim(f"stability/{cid}-hover-low", claim, f"median of {what}", hover),
        make_claim(f"stability/{cid}-hover-high", claim, f"median of {what}", hover),
    ]
    if kind == "gd":
        claims.append(make_claim(
            "stability/eos-loss-decreases", claim,
            "train loss at the end / at the first reach of 1.8 (GD keeps descending at the edge)",
            _per_seed(st, "loss_ratio", seeds)))
    return claims, [r for p in per for r in p["rows"]], st


def _batch_part(out: Path, size: str) -> tuple[list[Claim], list[dict[str, Any]]]:
    """Part 4: SGD as in ``sgd-batch-size`` at ``BATCHES[size]``; batch sharpness at the end."""
    steps = {"tiny": 120, "quick": 800, "full": 3000}[size]
    rows = []
    for seed in _seeds(size):
        d = _synthetic(size, seed)
        data = make_dataset(config_from_dict({"data": d}).data)
        X, y = data.X_train, data.y_train.reshape(data.X_train.shape[0], -1)
        for b in BATCHES[size]:
            cfg = _cfg(data=d, model={"width": {"tiny": 256, "quick": 512, "full": 1024}[size],
                                      "depth": 2},
                       train={"optimizer": "sgd", "lr": 1.0, "batch_size": b, "steps": steps,
                              "seed": seed, "test_every": 200,
                              "schedule": {"kind": "critical", "milestones": [0],
                                           "values": [LR_MULTIPLE]}},
                       output={"figures": False, "checkpoint": False})
            res = _run(cfg, out / "runs" / f"sgd-b{b}-seed{seed}")
            row: dict[str, Any] = {"batch_size": b, "seed": seed, "status": res.status,
                                   "lr": res.history[0]["lr"],
                                   "final_train_loss": res.summary.get("final_train_loss")}
            if res.status == "completed":
                model = res.model.eval()
                est = batch_sharpness(model, X, y, b, rel_se=0.05, max_batches=400,
                                      generator=torch.Generator().manual_seed(seed))
                lam = float(hessian_top_eigenpairs(model, X, y, 1)[0][0])
                lr = row["lr"]
                row.update(batch_sharpness=est.mean, batch_sharpness_se=est.se,
                           batch_sharpness_lo=est.interval[0], batch_sharpness_hi=est.interval[1],
                           batches=est.batches, converged=est.converged,
                           eta_batch_sharpness=lr * est.mean,
                           eta_batch_sharpness_lo=lr * est.interval[0],
                           eta_batch_sharpness_hi=lr * est.interval[1],
                           lambda_hessian=lam, eta_lambda_hessian=lr * lam)
            rows.append(row)
    claims = []
    for b in BATCHES[size]:
        mine = sorted((r for r in rows if r["batch_size"] == b), key=lambda r: r["seed"])
        vals = [r.get("eta_batch_sharpness") for r in mine]
        full = [r.get("eta_lambda_hessian") for r in mine]
        stat = "eta x batch sharpness E_B[g_B^T H_B g_B/|g_B|^2] of the trained net"
        for side in ("low", "high"):
            claims.append(make_claim(
                f"b{b}:stability/batch-sharpness-{side}", "edge of stochastic stability (SGD)",
                stat, vals, control=f"eta x lambda_max(H) full batch: {full}"))
    return claims, rows


def exp_stability(out: Path, size: str) -> ExperimentResult:
    """The four parts of the module docstring at ``size`` under ``out``."""
    eos_claims, eos_rows, eos_st = _edge_part(out, size, "gd")
    adam_claims, adam_rows, adam_st = _edge_part(out, size, "adam")
    cat_claims, cat_rows, cat_fig = exp_catapults(out, size)
    bs_claims, bs_rows = _batch_part(out, size)
    tables = [_write_csv(out / "stability-eos.csv", eos_rows),
              _write_csv(out / "stability-eos-runs.csv", eos_st),
              _write_csv(out / "stability-adam.csv", adam_rows),
              _write_csv(out / "stability-adam-runs.csv", adam_st),
              _write_csv(out / "stability-catapults.csv", cat_rows),
              _write_csv(out / "stability-batch-sharpness.csv", bs_rows)]
    figs = [_fig_edge(eos_rows, "gd", out / "stability-eos.png"),
            _fig_edge(adam_rows, "adam", out / "stability-adam.png"), cat_fig,
            _fig_batch_sharpness(bs_rows, out / "stability-batch-sharpness.png")]
    gn = [s["gn_hover_median"] for s in eos_st if s["gn_hover_median"] is not None]
    notes = [f"GD at the edge: median eta*lambda_max(H_GN) {statistics.median(gn):.3g} "
             "(beside eta*lambda_max(H) in stability-eos-runs.csv)" if gn else
             "GD never reached the edge: no Gauss-Newton comparison"]
    done = [s for s in eos_st if s["catapults"] is not None]
    if done:
        notes.append("the detector at the edge of stability (GD at a fixed lr, no lr change): "
                     f"{sum(s['catapults'] for s in done)} catapult(s) in {len(done)} run(s), "
                     f"{sum(s['spontaneous'] or 0 for s in done)} of them spontaneous; "
                     f"{sum(s['oscillations'] or 0 for s in done)} oscillation episode(s)")
    return ExperimentResult("stability", [*eos_claims, *adam_claims, *cat_claims, *bs_claims],
                            figs, tables, notes=notes)


def _fig_edge(rows: list[dict[str, Any]], kind: str, path: Path) -> Path:
    """Seed 0: sharpness over steps per lr with its threshold (2/η; 38/η for Adam's
    preconditioned sharpness), and the train loss."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    seed0 = [r for r in rows if r["seed"] == min((r["seed"] for r in rows), default=0)]
    key, factor = (("lambda_hessian", 2.0) if kind == "gd" else ("lambda_preconditioned", 38.0))
    for i, level in enumerate(sorted({r["level"] for r in seed0})):
        mine = [r for r in seed0 if r["level"] == level and r.get(key) is not None
                and (kind == "gd" or r["step"] > 0)]
        if not mine:
            continue
        steps, lr = [r["step"] for r in mine], mine[0]["lr"]
        a.plot(steps, [r[key] for r in mine], color=f"C{i}", label=f"η = {lr:.3g}")
        if kind == "gd":
            a.plot(steps, [r["lambda_gn"] for r in mine], ":", color=f"C{i}",
                   label=f"GN, η = {lr:.3g}")
        a.axhline(factor / lr, color=f"C{i}", ls="--", lw=1,
                  label=f"{factor:g}/η = {factor / lr:.3g}")
        b.plot(steps, [max(r["loss"], 1e-12) for r in mine], color=f"C{i}", label=f"η = {lr:.3g}")
    a.set_xlabel("step")
    a.set_ylabel("λ_max(H)" if kind == "gd" else "λ_max(P⁻¹H)")
    a.set_yscale("log")
    a.set_title("Sharpness against the edge" if kind == "gd" else
                "Adam: preconditioned sharpness against 38/η")
    a.legend(fontsize=7)
    b.set_xlabel("step")
    b.set_ylabel("train loss")
    b.set_yscale("log")
    b.set_title(f"Full-batch {'GD' if kind == 'gd' else 'Adam'}, tanh MLP, standard param.")
    b.legend(fontsize=8)
    return _save(fig, path)


def _fig_batch_sharpness(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(1, 1, figsize=(6.5, 4.2))
    ok = [r for r in rows if r.get("eta_batch_sharpness") is not None]
    for j, seed in enumerate(sorted({r["seed"] for r in ok})):
        mine = sorted((r for r in ok if r["seed"] == seed), key=lambda r: r["batch_size"])
        x = [r["batch_size"] * (1 + 0.06 * (j - 1)) for r in mine]
        y = [r["eta_batch_sharpness"] for r in mine]
        err = [[v - r["eta_batch_sharpness_lo"] for v, r in zip(y, mine)],
               [r["eta_batch_sharpness_hi"] - v for v, r in zip(y, mine)]]
        ax.errorbar(x, y, yerr=err, fmt="o", color=f"C{j}", capsize=3,
                    label=f"η × batch sharpness, seed {seed}")
        ax.plot(x, [r["eta_lambda_hessian"] for r in mine], "x", color=f"C{j}",
                label=f"η × λ_max(H) full batch, seed {seed}")
    ax.axhline(2.0, color="k", ls="--", label="2 (the edge: 2/η)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("η × sharpness of the trained net")
    ax.set_title(f"SGD at {LR_MULTIPLE} x the full-batch critical rate")
    ax.legend(fontsize=7)
    return _save(fig, path)
