"""gd-single: one catapult in full-batch GD at 1.5x the critical learning rate of the initial
network; the loss split into its top-eigenspace part and the rest, NTK eigenvalues against the
critical level.
"""

from __future__ import annotations

import math
from pathlib import Path

from catapults.experiments.claims import ExperimentResult, make_claim
from catapults.experiments.common import (
    _cfg,
    _plt,
    _read_events,
    _run,
    _save,
    _synthetic,
    _width,
    _write_csv,
)


def exp_gd_single(out: Path, size: str) -> ExperimentResult:
    """One catapult in full-batch GD at 1.5x the critical learning rate of the initial network."""
    data = _synthetic(size)
    steps = {"tiny": 80, "quick": 200, "full": 300}[size]
    cfg = _cfg(data=data, model={"width": _width(size), "depth": 2},
               train={"optimizer": "gd", "lr": 1.0, "steps": steps,
                      "schedule": {"kind": "critical", "milestones": [0], "values": [1.5]}},
               monitor={"ntk": {"enabled": True, "every": 1, "k": 5},
                        "events": {"enabled": True}})
    res = _run(cfg, out / "runs" / "gd-1.5x")
    events = _read_events(res)
    rows = [r for r in res.history if "ntk/lambda" in r]
    table = [{"step": r["step"], "lr": r["lr"], "loss": r["loss"], "L_top": r["ntk/L_top"],
              "L_rest": r["ntk/L_rest"], "critical_level": r["ntk/critical_level"],
              **{f"lambda_{i + 1}": v for i, v in enumerate(r["ntk/lambda"])}} for r in rows]
    csv_path = _write_csv(out / "gd-single.csv", table)
    confirmed = sum(e["info"].get("confirmed") is True for e in events)
    claims = [make_claim("gd-single/one-catapult", "catapult",
                         "number of catapults detected at lr = 1.5 eta_crit", float(len(events)),
                         confirmed=confirmed)]
    ev = events[0] if events else None
    share = ev["info"].get("top_share") if ev else None
    claims.append(make_claim("gd-single/top-share", "claim 1",
                             "L_top / L at the largest probe loss of the catapult (s top "
                             "eigenvectors)", share))
    growth = None
    if ev:
        inside = [r for r in rows if ev["start"] <= r["step"] <= ev["end"]]
        start = next((r for r in rows if r["step"] == ev["start"]), None)
        if inside and start and start["ntk/L_rest"] and start["ntk/L_rest"] > 0:
            growth = max(r["ntk/L_rest"] for r in inside if r["ntk/L_rest"] is not None) / start[
                "ntk/L_rest"]
    claims.append(make_claim("gd-single/rest-growth", "claim 1",
                             "max L_rest during the catapult / L_rest at its start "
                             "(the loss itself rises >= 3x)", growth))
    ratio = None
    if ev and ev["info"].get("eta_crit_after"):
        ratio = ev["info"]["lr"] / ev["info"]["eta_crit_after"]
    claims.append(make_claim("gd-single/lr-below-new-critical", "catapult",
                             "lr / eta_crit after the catapult (lambda_max fell until "
                             "eta < eta_crit)", ratio))
    figs = [_fig_gd_single(table, events, out / "gd-single.png")]
    return ExperimentResult("gd-single", claims, figs, [csv_path])


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
