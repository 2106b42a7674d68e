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

from catapults.experiments.claims import Claim, ExperimentResult, make_claim, spearman
from catapults.experiments.common import (
    _cfg,
    _events,
    _final_alignment,
    _plt,
    _run,
    _save,
    _synthetic,
    _synthetic_reference,
    _write_csv,
)
from catapults.runs import RunResult


def _batch_runs(out: Path, size: str, data: dict[str, Any], *, tag: str, lr: float,
                reference: Callable[[list[RunResult]], tuple[torch.Tensor, torch.Tensor]]
                | None = None) -> list[dict[str, Any]]:
    n = data["n_train"]
    sizes = {"tiny": [4, 16, n], "quick": [4, 16, 64, n], "full": [2, 4, 8, 16, 32, 64, 128, n]}
    seeds = {"tiny": [0], "quick": [0, 1, 2], "full": [0, 1, 2, 3, 4]}[size]
    steps = {"tiny": 120, "quick": 800, "full": 3000}[size]
    rows, results = [], []
    for b in sizes[size]:
        for seed in seeds:
            full = b >= n
            cfg = _cfg(data=data, model={"width": {"tiny": 256, "quick": 512, "full": 1024}[size],
                                         "depth": 2},
                       train={"optimizer": "gd" if full else "sgd", "lr": lr,
                              "batch_size": None if full else b, "steps": steps,
                              "eval_every": 1, "test_every": 200, "seed": seed},
                       monitor={"events": {"enabled": True}},
                       output={"checkpoint": reference is not None, "figures": False})
            res = _run(cfg, out / "runs" / f"{tag}-b{b}-seed{seed}")
            results.append(res)
            rows.append({"batch_size": b, "seed": seed, "status": res.status,
                         "catapults": _events(res).get("count"),
                         # the detector's noise estimate: smaller batches, noisier losses
                         "loss_noise_sigma": (_events(res).get("calibration") or {}).get("sigma"),
                         "final_train_loss": res.summary["final_train_loss"],
                         "final_test_loss": res.summary["final_test_loss"],
                         "final_test_error": res.summary.get("final_test_error"),
                         "run": str(res.dir)})
    G_ref, X_ref = reference(results) if reference else _synthetic_reference(data)
    for row, res in zip(rows, results):
        ok = res.status == "completed"
        row["agop_alignment"] = _final_alignment(res, G_ref, X_ref) if ok else None
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
    agg = {m: _mean_by(rows, "batch_size", m) for m in
           ["catapults", "agop_alignment", "final_test_loss"]}
    bs = sorted({r["batch_size"] for r in rows})
    table = [{"batch_size": b, **{f"{m}_{s}": agg[m].get(b, (None, None, 0))[i]
                                  for m in agg for i, s in enumerate(["mean", "std", "n"])}}
             for b in bs]

    def rho(m):
        pts = [(b, agg[m][b][0]) for b in bs if b in agg[m]]
        return spearman([p[0] for p in pts], [p[1] for p in pts]) if pts else None

    claims = [
        make_claim(f"{prefix}sgd-batch-size/catapults-vs-batch", "claim 2",
                   "Spearman(batch size, mean number of catapults)", rho("catapults")),
        make_claim(f"{prefix}sgd-batch-size/alignment-vs-batch", "claim 3",
                   "Spearman(batch size, mean AGOP alignment)", rho("agop_alignment")),
        make_claim(f"{prefix}sgd-batch-size/test-loss-vs-batch", "claim 3",
                   "Spearman(batch size, mean test loss)", rho("final_test_loss")),
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
    data = _synthetic(size)
    rows = _batch_runs(out, size, data, tag="sgd", lr=3.0)
    claims, table = _batch_claims("", rows)
    tables = [_write_csv(out / "sgd-batch-size-runs.csv", rows),
              _write_csv(out / "sgd-batch-size.csv", table)]
    figs = [_fig_batch(table, out / "sgd-batch-size.png",
                       "SGD at lr 3 on x1*x2: smaller batches, more catapults")]
    return ExperimentResult("sgd-batch-size", claims, figs, tables)
