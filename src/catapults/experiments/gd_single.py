"""gd-single: one catapult in full-batch GD at 1.5x the critical learning rate of the initial
network, over seeds; the loss split into its top-eigenspace part and the rest in two bases (the
kernel of each step, and the kernel where the catapult started), NTK eigenvalues against the
critical level; the same run at 0.9x as the control.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from catapults import metrics
from catapults.experiments.claims import ExperimentResult, make_claim
from catapults.experiments.common import (
    _cfg,
    _events,
    _plt,
    _read_events,
    _run,
    _save,
    _seeds,
    _synthetic,
    _width,
    _write_csv,
)
from catapults.monitors.split import L_REST_FIXED, L_TOP_FIXED, FixedBasisSplit


def _single_seed(out: Path, size: str, seed: int) -> dict[str, Any]:
    """One seed: GD at 1.5x eta_crit (NTK every step, the split in both bases) and its
    control at 0.9x (no catapult expected). Returns the per-seed statistics and the table."""
    data = _synthetic(size, seed)
    steps = {"tiny": 80, "quick": 200, "full": 300}[size]

    def cfg(mult: float, ntk: bool) -> dict[str, Any]:
        return _cfg(data=data, model={"width": _width(size), "depth": 2},
                    train={"optimizer": "gd", "lr": 1.0, "steps": steps, "seed": seed,
                           "schedule": {"kind": "critical", "milestones": [0],
                                        "values": [mult]}},
                    monitor={"ntk": {"enabled": ntk, "every": 1, "k": 5},
                             "events": {"enabled": True}},
                    output={"figures": seed == 0})

    # the basis fixed where the catapult starts: the raise to 1.5x is at step 0
    res = _run(cfg(1.5, True), out / "runs" / f"gd-1.5x-seed{seed}",
               callbacks=[FixedBasisSplit(at=0)])
    control = _run(cfg(0.9, False), out / "runs" / f"gd-0.9x-seed{seed}")
    events = _read_events(res)
    rows = [r for r in res.history if metrics.NTK_LAMBDA in r]
    table = [{"seed": seed, "step": r["step"], "lr": r["lr"], "loss": r["loss"],
              "L_top": r[metrics.NTK_L_TOP], "L_rest": r[metrics.NTK_L_REST],
              "L_top_fixed": r.get(L_TOP_FIXED), "L_rest_fixed": r.get(L_REST_FIXED),
              "critical_level": r[metrics.NTK_CRITICAL_LEVEL],
              **{f"lambda_{i + 1}": v for i, v in enumerate(r[metrics.NTK_LAMBDA])}}
             for r in rows]
    stats: dict[str, Any] = {"seed": seed, "catapults": len(events),
                             "confirmed": sum(e["info"].get("confirmed") is True for e in events),
                             "control_catapults": _events(control).get("count"),
                             "status": res.status, "control_status": control.status}
    ev = events[0] if events else None
    stats["top_share"] = ev["info"].get("top_share") if ev else None
    for basis, top, rest in [("", "L_top", "L_rest"), ("_fixed", "L_top_fixed", "L_rest_fixed")]:
        share = growth = None
        if ev:
            inside = [r for r in table if ev["start"] <= r["step"] <= ev["end"]
                      and r[rest] is not None]
            first = next((r for r in inside if r["step"] == ev["start"]), None)
            if inside and first and first[rest] > 0:
                growth = max(r[rest] for r in inside) / first[rest]
            if inside and basis:
                peak = max(inside, key=lambda r: r[top] + r[rest])
                total = peak[top] + peak[rest]
                share = peak[top] / total if total > 0 else None
        stats[f"rest_growth{basis}"] = growth
        if basis:
            stats["top_share_fixed"] = share
    stats["lr_over_new_critical"] = (ev["info"]["lr"] / ev["info"]["eta_crit_after"]
                                     if ev and ev["info"].get("eta_crit_after") else None)
    return {"stats": stats, "table": table, "events": events}


def exp_gd_single(out: Path, size: str) -> ExperimentResult:
    """One catapult in full-batch GD at 1.5x the critical learning rate of the initial network,
    over seeds, with the 0.9x run of each seed as the control."""
    per = [_single_seed(out, size, seed) for seed in _seeds(size)]
    st = [p["stats"] for p in per]

    def col(key: str) -> list[Any]:
        return [s[key] for s in st]

    step_basis = "top-s eigenvectors of the kernel of each step (s: eigenvalues above n*c/lr)"
    fixed_basis = "top-s eigenvectors of the kernel at the catapult's start (step 0), kept"
    claims = [
        make_claim("gd-single/one-catapult", "catapult",
                   "1 if exactly one catapult is detected at lr = 1.5 eta_crit, else 0",
                   [float(c == 1) for c in col("catapults")], catapults=col("catapults"),
                   confirmed=col("confirmed")),
        make_claim("gd-single/none-below-critical", "catapult (control)",
                   "catapults detected at lr = 0.9 eta_crit (same seed, data and steps)",
                   [None if c is None else float(c) for c in col("control_catapults")],
                   control="the same run at 0.9 eta_crit"),
        make_claim("gd-single/top-share", "claim 1",
                   "L_top / L at the largest probe loss of the catapult", col("top_share"),
                   basis=step_basis),
        make_claim("gd-single/top-share-fixed-basis", "claim 1",
                   "L_top / L at the largest probe loss of the catapult",
                   col("top_share_fixed"), basis=fixed_basis),
        make_claim("gd-single/rest-growth", "claim 1",
                   "max L_rest during the catapult / L_rest at its start (the loss itself "
                   "rises >= 3x)", col("rest_growth"), basis=step_basis),
        make_claim("gd-single/rest-growth-fixed-basis", "claim 1",
                   "max L_rest during the catapult / L_rest at its start",
                   col("rest_growth_fixed"), basis=fixed_basis),
        make_claim("gd-single/lr-below-new-critical", "catapult",
                   "lr / eta_crit after the catapult (lambda_max fell until eta < eta_crit)",
                   col("lr_over_new_critical")),
    ]
    tables = [_write_csv(out / "gd-single.csv", [r for p in per for r in p["table"]]),
              _write_csv(out / "gd-single-seeds.csv", st)]
    figs = [_fig_gd_single(per[0]["table"], per[0]["events"], out / "gd-single.png")]
    return ExperimentResult("gd-single", claims, figs, tables)


def _fig_gd_single(table, events, path: Path) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    steps = [r["step"] for r in table]
    for key, color in [("loss", "C0"), ("L_top", "C3"), ("L_rest", "C2")]:
        a.plot(steps, [max(r[key], 1e-16) if r[key] is not None else math.nan for r in table],
               color=color, label={"loss": "L", "L_top": "L_top", "L_rest": "L_rest"}[key])
    for ev in events:
        a.axvspan(ev["start"], ev["end"], color="C3", alpha=0.1)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_title("Loss and its top-eigenspace part")
    a.legend()
    k = sum(1 for key in table[0] if key.startswith("lambda_")) if table else 0
    for i in range(k):
        b.plot(steps, [r[f"lambda_{i + 1}"] for r in table], label=f"λ_{i + 1}")
    b.plot(steps, [r["critical_level"] for r in table], "k--", label="n·c/η")
    b.set_yscale("log")
    b.set_xlabel("step")
    b.set_title("NTK eigenvalues against the critical level")
    b.legend(fontsize=8)
    return _save(fig, path)
