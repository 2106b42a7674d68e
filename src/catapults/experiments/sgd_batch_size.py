"""sgd-batch-size: batch sizes from very small to full batch at one learning rate, several
seeds; catapults, AGOP alignment and test loss against the batch size. Its runs, claims and
figure also serve ``real``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from catapults.experiments.claims import Claim, ExperimentResult, make_claim
from catapults.experiments.common import (
    _cfg,
    _events,
    _final_features,
    _plt,
    _run,
    _save,
    _seeds,
    _synthetic,
    _synthetic_reference,
    _write_csv,
)
from catapults.experiments.stats import decide_resampled, spearman, within_slope
from catapults.runs import RunResult

LR_MULTIPLE = 0.8
"""Every batch size trains at 0.8x the full-batch critical rate of its initial network (as
sgd-spikes): full-batch GD does not catapult there, while batches small enough that
lambda_max(K_B) / b exceeds lambda_max(K) / n cross their own critical rate. (Before issue 15 the
rate was a fixed lr = 3, at which only batch 4 ever catapulted.)"""


def _batch_sizes(size: str, n: int) -> list[int]:
    """At least 5 levels for the rank correlations, several of them small enough to catapult."""
    return {"tiny": [2, 4, 8, 16, n], "quick": [2, 4, 8, 16, 64, n],
            "full": [2, 4, 8, 16, 32, 64, 128, n]}[size]


def _batch_runs(out: Path, size: str, data: dict[str, Any] | Callable[[int], dict[str, Any]],
                *, tag: str,
                reference: Callable[[list[RunResult]], tuple[torch.Tensor, torch.Tensor]]
                | None = None, model: dict[str, Any] | None = None, steps: int | None = None,
                batch_sizes: list[int] | None = None) -> list[dict[str, Any]]:
    """Every batch size x seed; ``data`` is a data config or ``seed -> data config``. With a
    ``reference`` (real data), the reference AGOP is taken per seed from that seed's runs.

    Overrides (``reproduce architectures``): ``model`` the model section (default: the MLP of
    depth 2), ``steps`` the steps of every run, ``batch_sizes`` the batch sizes below the full
    batch (default :func:`_batch_sizes`; the full batch ``n`` is always added last)."""
    data_of = data if callable(data) else (lambda seed: data)
    if steps is None:
        steps = {"tiny": 120, "quick": 800, "full": 3000}[size]
    if model is None:
        model = {"width": {"tiny": 256, "quick": 512, "full": 1024}[size], "depth": 2}
    rows, results = [], []
    for seed in _seeds(size):
        srows, sres = [], []
        d = data_of(seed)
        n = d["n_train"]
        sizes = (_batch_sizes(size, n) if batch_sizes is None
                 else [b for b in batch_sizes if b < n] + [n])
        for b in sizes:
            full = b >= n
            cfg = _cfg(data=d, model=model,
                       train={"optimizer": "gd" if full else "sgd", "lr": 1.0,
                              "batch_size": None if full else b, "steps": steps,
                              "eval_every": 1, "test_every": 200, "seed": seed,
                              "schedule": {"kind": "critical", "milestones": [0],
                                           "values": [LR_MULTIPLE]}},
                       monitor={"events": {"enabled": True}},
                       output={"checkpoint": reference is not None, "figures": False})
            res = _run(cfg, out / "runs" / f"{tag}-b{b}-seed{seed}")
            sres.append(res)
            srows.append({"batch_size": b, "seed": seed, "status": res.status,
                          "lr": res.history[0]["lr"],
                         "catapults": _events(res).get("count"),
                         # the detector's noise estimate: smaller batches, noisier losses
                         "loss_noise_sigma": (_events(res).get("calibration") or {}).get("sigma"),
                         "final_train_loss": res.summary["final_train_loss"],
                         "final_test_loss": res.summary["final_test_loss"],
                         "final_test_error": res.summary.get("final_test_error"),
                         "run": str(res.dir)})
        G_ref, X_ref = reference(sres) if reference else _synthetic_reference(d)
        for row, res in zip(srows, sres):
            row.update(_final_features(res, G_ref, X_ref))
        rows += srows
        results += sres
    return rows


def _mean_by(rows, key, value):
    groups: dict[Any, list[float]] = {}
    for r in rows:
        v = r.get(value)
        if v is not None and math.isfinite(v) and r.get("status") == "completed":
            groups.setdefault(r[key], []).append(v)
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
            for k, v in sorted(groups.items())}


def _batch_claims(prefix: str, rows) -> tuple[list[Claim], list[dict[str, Any]]]:
    """Per seed, rank correlations over the batch sizes; and, pooled, the slope of alignment
    and test loss on the number of catapults *within* a batch size (centred per batch size,
    seeds as the replicates), which separates catapults from batch size itself."""
    agg = {m: _mean_by(rows, "batch_size", m) for m in
           ["catapults", "agop_alignment", "final_test_loss"]}
    bs = sorted({r["batch_size"] for r in rows})
    table = [{"batch_size": b, **{f"{m}_{s}": agg[m].get(b, (None, None, 0))[i]
                                  for m in agg for i, s in enumerate(["mean", "std", "n"])}}
             for b in bs]
    seeds: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        seeds.setdefault(r["seed"], []).append(r)
    groups = list(seeds.values())

    def rho(m: str) -> list[float | None]:
        return [spearman([r["batch_size"] for r in g if r["status"] == "completed"],
                         [r[m] for r in g if r["status"] == "completed"]) for g in groups]

    def within(m: str) -> list[list[tuple[Any, float, float]]]:
        return [[(r["batch_size"], r["catapults"], r[m]) for r in g
                 if r["status"] == "completed" and r.get(m) is not None
                 and r.get("catapults") is not None] for g in groups]

    within_note = ("least-squares slope, catapults and the metric centred per batch size over "
                   "seeds (cluster bootstrap over seeds)")
    claims = [
        make_claim(f"{prefix}sgd-batch-size/catapults-vs-batch", "claim 2",
                   "Spearman(batch size, catapults) over the batch sizes of a seed",
                   rho("catapults")),
        make_claim(f"{prefix}sgd-batch-size/alignment-vs-batch", "claim 3",
                   "Spearman(batch size, AGOP alignment) over the batch sizes of a seed",
                   rho("agop_alignment")),
        make_claim(f"{prefix}sgd-batch-size/test-loss-vs-batch", "claim 3",
                   "Spearman(batch size, test loss) over the batch sizes of a seed",
                   rho("final_test_loss")),
        make_claim(f"{prefix}sgd-batch-size/alignment-per-catapult-within-batch", "claim 3",
                   "change of AGOP alignment per extra catapult within a batch size",
                   [], decision=decide_resampled(within("agop_alignment"), within_slope, ">",
                                                 0.0), control=within_note),
        make_claim(f"{prefix}sgd-batch-size/test-loss-per-catapult-within-batch", "claim 3",
                   "change of test loss per extra catapult within a batch size",
                   [], decision=decide_resampled(within("final_test_loss"), within_slope, "<",
                                                 0.0), control=within_note),
    ]
    return claims, table


def _fig_batch(table, path: Path, title: str) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    bs = [r["batch_size"] for r in table]
    for ax, (m, label) in zip(axes, [("catapults", "number of catapults"),
                                     ("agop_alignment", "AGOP alignment"),
                                     ("final_test_loss", "test loss")]):
        mean = [r[f"{m}_mean"] if r[f"{m}_mean"] is not None else math.nan for r in table]
        std = [r[f"{m}_std"] if r[f"{m}_std"] is not None else 0.0 for r in table]
        ax.errorbar(bs, mean, yerr=std, fmt="o-", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
    fig.suptitle(title)
    return _save(fig, path)


def exp_sgd_batch_size(out: Path, size: str) -> ExperimentResult:
    """Batch sizes from very small to full batch at one learning rate, several seeds."""
    rows = _batch_runs(out, size, lambda seed: _synthetic(size, seed), tag="sgd")
    claims, table = _batch_claims("", rows)
    tables = [_write_csv(out / "sgd-batch-size-runs.csv", rows),
              _write_csv(out / "sgd-batch-size.csv", table)]
    figs = [_fig_batch(table, out / "sgd-batch-size.png",
                       f"SGD at {LR_MULTIPLE} x the full-batch critical rate on x1*x2: "
                       "batch size, catapults, alignment, test loss")]
    return ExperimentResult("sgd-batch-size", claims, figs, tables)
