"""gd-multi: multiple catapults from learning-rate raises in full-batch GD; test loss and AGOP
alignment against the number of catapults. Its runs, claims and figure also serve ``real``.
"""

from __future__ import annotations

import math
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
    _width,
    _write_csv,
)
from catapults.runs import RunResult


def _multi_runs(out: Path, size: str, data: dict[str, Any], *, tag: str,
                reference: Callable[[list[RunResult]], tuple[torch.Tensor, torch.Tensor]]
                | None = None) -> tuple[list[dict[str, Any]], list[RunResult]]:
    """Runs with k = 0..K learning-rate raises to 1.3x the critical rate measured at the raise."""
    K = {"tiny": 2, "quick": 3, "full": 4}[size]
    gap = {"tiny": 60, "quick": 100, "full": 150}[size]
    results, rows = [], []
    for k in range(K + 1):
        # k = 0: 0.9x the initial critical rate (no catapult); k raises: 1.3x at each milestone
        milestones = [0] + [40 + gap * i for i in range(k)]
        values = [0.9] + [1.3] * k
        cfg = _cfg(data=data, model={"width": _width(size), "depth": 2},
                   train={"optimizer": "gd", "lr": 1.0, "steps": 40 + gap * (K + 1),
                          "eval_every": 10,
                          "schedule": {"kind": "critical", "milestones": milestones,
                                       "values": values}},
                   monitor={"events": {"enabled": True}})
        res = _run(cfg, out / "runs" / f"{tag}-raises{k}")
        results.append(res)
        rows.append({"raises": k, "catapults": _events(res).get("count"),
                     "loss_noise_sigma": (_events(res).get("calibration") or {}).get("sigma"),
                     "status": res.status, "final_train_loss": res.summary["final_train_loss"],
                     "final_test_loss": res.summary["final_test_loss"],
                     "final_test_error": res.summary.get("final_test_error")})
    G_ref, X_ref = reference(results) if reference else _synthetic_reference(data)
    for row, res in zip(rows, results):  # a diverged model has no meaningful AGOP
        ok = res.status == "completed"
        row["agop_alignment"] = _final_alignment(res, G_ref, X_ref) if ok else None
    return rows, results


def _multi_claims(prefix: str, rows: list[dict[str, Any]]) -> list[Claim]:
    k = [r["raises"] for r in rows]
    c = [r["catapults"] for r in rows]
    al = [r["agop_alignment"] for r in rows]
    te = [r["final_test_loss"] for r in rows]
    return [
        make_claim(f"{prefix}gd-multi/catapults-follow-raises", "multiple catapults",
                   "Spearman(number of lr raises, catapults detected)", spearman(k, c),
                   raises=k, catapults=c),
        make_claim(f"{prefix}gd-multi/alignment-vs-catapults", "claim 3",
                   "Spearman(catapults, AGOP alignment)", spearman(c, al), alignment=al),
        make_claim(f"{prefix}gd-multi/test-loss-vs-catapults", "claim 3",
                   "Spearman(catapults, test loss)", spearman(c, te), test_loss=te),
    ]


def _fig_multi(rows, results, path: Path, title: str) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for row, res in zip(rows, results):
        xs = [r["step"] for r in res.history if r.get("loss") is not None]
        ys = [r["loss"] for r in res.history if r.get("loss") is not None]
        a.plot(xs, ys, lw=0.9, label=f"{row['raises']} raise(s): {row['catapults']} catapult(s)")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_title(title)
    a.legend(fontsize=8)
    c = [r["catapults"] for r in rows]
    b.plot(c, [r["final_test_loss"] for r in rows], "o-", color="C1", label="test loss")
    b.set_xlabel("number of catapults")
    b.set_ylabel("test loss", color="C1")
    b2 = b.twinx()
    b2.plot(c, [math.nan if r["agop_alignment"] is None else r["agop_alignment"] for r in rows],
            "s--", color="C2", label="AGOP alignment")
    b2.set_ylabel("AGOP alignment", color="C2")
    b.set_title("Generalisation and feature learning against catapults")
    return _save(fig, path)


def exp_gd_multi(out: Path, size: str) -> ExperimentResult:
    """Multiple catapults from learning-rate raises; test loss and AGOP alignment against them."""
    data = _synthetic(size)
    rows, results = _multi_runs(out, size, data, tag="gd")
    claims = _multi_claims("", rows)
    figs = [_fig_multi(rows, results, out / "gd-multi.png", "GD with learning-rate raises")]
    tables = [_write_csv(out / "gd-multi.csv", rows)]
    notes = []
    if size == "full":  # the public reference schedule (SPEC.md section 2), as it is
        ref_cfg = _cfg(data={**data, "n_train": 256}, model={"width": 1024, "depth": 2},
                       train={"optimizer": "gd", "lr": 2.0, "epochs": 450, "schedule": {
                           "kind": "step", "unit": "epoch",
                           "milestones": [50, 150, 220, 280, 350, 400],
                           "values": [8, 16, 30, 50, 60, 80]}},
                       monitor={"ntk": {"enabled": True, "every": 5},
                                "events": {"enabled": True}})
        ref = _run(ref_cfg, out / "runs" / "reference-schedule")
        notes.append(f"reference schedule (n=256): status {ref.status}, "
                     f"{_events(ref).get('count')} catapult(s)")
    return ExperimentResult("gd-multi", claims, figs, tables, notes=notes)
