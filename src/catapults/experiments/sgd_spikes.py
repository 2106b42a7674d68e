"""sgd-spikes: SGD spikes are catapults: batches crossing their own critical learning rate warn
of them, and most of each spike lies in the top eigenspace of the NTK; shown over seeds against
the null of the same network linearised at initialisation (a frozen kernel cannot catapult),
with the early warning scored against random flags at the same rate.
"""

from __future__ import annotations

import statistics
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
from catapults.experiments.stats import auc, paired_differences
from catapults.runs import RunResult

MECHANISM_FALL = 0.95
"""A spike has the catapult mechanism when lambda_max after it is at most this fraction of
lambda_max before it (fixed 2026-12-02, issue 15, before the statistics were computed)."""


def _spike_run(out: Path, size: str, seed: int, *, linearize: bool) -> RunResult:
    """SGD with batch 8 at 0.8x the full-batch critical rate of the initial network: GD would
    not catapult, while small batches (larger lambda_max(K_B) / b) cross their own critical
    rate. ``linearize``: the same network linearised at its initialisation (frozen kernel, it
    cannot catapult), with the same data, initial weights, batches and learning rate."""
    data = _synthetic(size, seed)
    steps = {"tiny": 150, "quick": 800, "full": 2000}[size]
    cfg = _cfg(data=data, model={"width": _width(size), "depth": 2, "linearize": linearize},
               train={"optimizer": "sgd", "lr": 1.0, "batch_size": 8, "steps": steps,
                      "eval_every": 1, "test_every": 100, "seed": seed,
                      "schedule": {"kind": "critical", "milestones": [0], "values": [0.8]}},
               monitor={"ntk": {"enabled": True, "every": 1 if size == "tiny" else 2, "k": 5,
                                "probe_size": min(256, data["n_train"]), "batch": True},
                        "events": {"enabled": True, "warning_window": WINDOW}},
               output={"figures": seed == 0 and not linearize})
    name = f"sgd-b8-{'linearized' if linearize else 'network'}-seed{seed}"
    return _run(cfg, out / "runs" / name)


WINDOW = 5


def _spike_stats(res: RunResult, events: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's per-seed statistics: spikes, their top-eigenspace shares, the spikes with the
    mechanism, and the early warning scored against random flags at the same rate."""
    steps = len(res.history)
    shares = [e["info"]["top_share"] for e in events if e["info"].get("top_share") is not None]
    shares5 = [e["info"]["top_share_by_s"][-1] for e in events
               if e["info"].get("top_share_by_s")]
    falls = [e["info"]["lambda_max_after"] / e["info"]["lambda_max_before"] for e in events
             if e["info"].get("lambda_max_after") and e["info"].get("lambda_max_before")]
    mech = sum(f <= MECHANISM_FALL for f in falls)
    starts = [e["start"] for e in events]
    rows = [r for r in res.history if r.get(metrics.NTK_BATCH_ETA_CRIT)]
    label = [any(r["step"] <= s0 <= r["step"] + WINDOW for s0 in starts) for r in rows]
    score = [r["lr"] / r[metrics.NTK_BATCH_ETA_CRIT] for r in rows]
    flag = [x > 1 for x in score]
    base = sum(label) / len(label) if label else None
    hits = sum(f and y for f, y in zip(flag, label))
    precision = hits / sum(flag) if any(flag) else None
    leads = []
    for s0 in starts:
        before = [r["step"] for r, f in zip(rows, flag) if f and s0 - WINDOW <= r["step"] <= s0]
        if before:
            leads.append(s0 - min(before))
    return {
        "status": res.status, "steps": steps, "spikes": len(events),
        "spikes_per_1000": 1000 * len(events) / steps if steps else None,
        "median_top_share": statistics.median(shares) if shares else None,
        "median_top_share_s5": statistics.median(shares5) if shares5 else None,
        "median_lambda_fall": statistics.median(falls) if falls else None,
        "mechanism_spikes": mech,
        "mechanism_per_1000": 1000 * mech / steps if steps else None,
        "confirmed": _events(res).get("confirmed_count"),
        "flag_rate": sum(flag) / len(flag) if flag else None,
        "warning_recall": (_events(res).get("early_warning") or {}).get("recall"),
        "warning_precision": precision, "warning_base_rate": base,
        "warning_lift": None if precision is None or base is None else precision - base,
        "warning_auc": auc(score, label),
        "median_lead_steps": statistics.median(leads) if leads else None,
    }


def exp_sgd_spikes(out: Path, size: str) -> ExperimentResult:
    """SGD spikes against the linearised-network null, over seeds: top-eigenspace shares, the
    spikes with the catapult mechanism, and the early warning at matched flag rates."""
    per: list[dict[str, Any]] = []
    first = None
    for seed in _seeds(size):
        net, lin = (_spike_run(out, size, seed, linearize=f) for f in (False, True))
        ev_net, ev_lin = _read_events(net), _read_events(lin)
        a, b = _spike_stats(net, ev_net), _spike_stats(lin, ev_lin)
        per.append({"seed": seed, **{f"network_{k}": v for k, v in a.items()},
                    **{f"linearized_{k}": v for k, v in b.items()}})
        if first is None:
            first = (net, ev_net)

    def col(key: str) -> list[Any]:
        return [p[key] for p in per]

    null = "the network linearised at initialisation (frozen kernel), same seed, batches, lr"
    basis = "top-s eigenvectors of the probe kernel at the spike (s: eigenvalues above n*c/lr)"
    claims = [
        make_claim("sgd-spikes/top-share", "claim 2",
                   "median over SGD spikes of L_top / L at the spike (probe set)",
                   col("network_median_top_share"), basis=basis,
                   spikes=col("network_spikes")),
        make_claim("sgd-spikes/top-share-s5", "claim 2",
                   "the same with s = 5 (the paper's reported choice)",
                   col("network_median_top_share_s5"), basis="top-5 eigenvectors at the spike"),
        make_claim("sgd-spikes/top-share-vs-linearized", "claim 2 (null)",
                   "median top share of the network's spikes - that of the linearised "
                   "network's (paired by seed)",
                   paired_differences(col("network_median_top_share"),
                                      col("linearized_median_top_share")),
                   control=null, basis=basis, linearized=col("linearized_median_top_share"),
                   linearized_spikes=col("linearized_spikes")),
        make_claim("sgd-spikes/mechanism-vs-linearized", "claim 2 (null)",
                   f"spikes per 1000 steps after which lambda_max fell to <= {MECHANISM_FALL} "
                   "of its value before, network - linearised (paired by seed)",
                   paired_differences(col("network_mechanism_per_1000"),
                                      col("linearized_mechanism_per_1000")),
                   control=null, network=col("network_mechanism_per_1000"),
                   linearized=col("linearized_mechanism_per_1000")),
        make_claim("sgd-spikes/warning-recall", "claim 2",
                   f"share of spikes preceded within {WINDOW} steps by a batch with eta > "
                   "eta_crit(B) (recall; near 1 by construction when most batches are flagged)",
                   col("network_warning_recall"), flag_rate=col("network_flag_rate")),
        make_claim("sgd-spikes/warning-lift", "claim 2",
                   "precision of the flags eta > eta_crit(B) - that of random flags at the same "
                   f"rate (the share of steps with a spike start within {WINDOW} steps)",
                   col("network_warning_lift"), control="random flags at the same rate",
                   precision=col("network_warning_precision"),
                   base_rate=col("network_warning_base_rate")),
        make_claim("sgd-spikes/warning-auc", "claim 2",
                   f"AUC of eta / eta_crit(B) at step t for a spike starting in t..t+{WINDOW}",
                   col("network_warning_auc"), control="AUC 0.5: a score unrelated to spikes",
                   median_lead_steps=col("network_median_lead_steps")),
    ]
    net, events = first
    table = [{"step": r["step"], "lr": r["lr"], "train_loss": r.get("train_loss"),
              "batch_eta_crit": r.get(metrics.NTK_BATCH_ETA_CRIT),
              "flag": (r.get(metrics.NTK_BATCH_ETA_CRIT) is not None
                       and r["lr"] > r[metrics.NTK_BATCH_ETA_CRIT]),
              "L_top": r.get(metrics.NTK_L_TOP), "L_rest": r.get(metrics.NTK_L_REST)}
             for r in net.history]
    tables = [_write_csv(out / "sgd-spikes.csv", table),
              _write_csv(out / "sgd-spikes-seeds.csv", per),
              _write_csv(out / "sgd-spikes-events.csv",
                         [{k: v for k, v in {**e, **e["info"]}.items() if k != "info"}
                          for e in events],
                         columns=["start", "peak", "end", "baseline_loss", "peak_loss",
                                  "recovered", "lr", "top_share"])]
    figs = [_fig_sgd_spikes(table, events, out / "sgd-spikes.png")]
    notes = [f"seed {p['seed']}: network {p['network_spikes']} spikes "
             f"({p['network_mechanism_spikes']} with lambda_max falling), linearised "
             f"{p['linearized_spikes']} ({p['linearized_mechanism_spikes']})" for p in per]
    return ExperimentResult("sgd-spikes", claims, figs, tables, notes=notes)


def _fig_sgd_spikes(table, events, path: Path) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    s = [r["step"] for r in table if r["train_loss"] is not None]
    a.plot(s, [r["train_loss"] for r in table if r["train_loss"] is not None], lw=0.8,
           label="training loss")
    ps = [r["step"] for r in table if r["L_top"] is not None]
    a.plot(ps, [max(r["L_top"], 1e-16) for r in table if r["L_top"] is not None], lw=0.8,
           color="C3", label="L_top (probe)")
    for ev in events:
        a.axvspan(ev["start"], ev["end"], color="C3", alpha=0.12)
    a.set_yscale("log")
    a.legend(fontsize=8)
    a.set_title("SGD spikes (shaded) and the top-eigenspace loss")
    bs = [r["step"] for r in table if r["batch_eta_crit"] is not None]
    b.plot(bs, [r["batch_eta_crit"] for r in table if r["batch_eta_crit"] is not None], lw=0.5,
           color="C1", label="η_crit(B) of each batch")
    b.plot([r["step"] for r in table], [r["lr"] for r in table], "k--", label="η")
    for ev in events:
        b.axvline(ev["start"], color="C3", lw=0.6, alpha=0.6)
    b.set_yscale("log")
    b.set_xlabel("step")
    b.legend(fontsize=8)
    return _save(fig, path)
