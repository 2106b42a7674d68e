"""beyond/prediction: predict an SGD catapult ``k`` steps ahead from the batch critical rates,
against a loss-only spike alarm (open question 4).

SGD with batch 8 at 0.8x the full-batch critical rate (as ``sgd-spikes``), the NTK monitor
measuring each batch's ``η_crit(B) = b·c / λ_max(K_B)``. At every step ``t`` two scores:

- *spectral*: ``max η / η_crit(B_u)`` over the last ``W`` updates ``u = t-W+1..t`` (how far
  recent batches went above their own critical rate);
- *loss alarm* (the baseline, the rolling-mean ratio rule used in large-model training): the
  loss at ``t`` over the mean of the ``R`` losses before it.

The event to predict: a catapult (the calibrated detector on the run's loss) starts in
``t+1..t+k``. Each score is judged by its ROC AUC, and, flagging the top ``q`` share of steps
(the same rate for both), by precision, recall and the lead time (steps from the first flag in
the ``k`` steps before a catapult to its start).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from catapults import metrics
from catapults.experiments.claims import Claim, make_claim
from catapults.experiments.common import _cfg, _plt, _run, _save, _seeds, _synthetic, _width
from catapults.experiments.stats import auc, effect_size, paired_differences

HORIZON = 5      # k: a catapult starting within the next k steps
WINDOW = 3       # W: recent batches of the spectral score
ROLLING = 10     # R: the loss alarm's rolling mean
FLAG_SHARE = 0.1  # q: both scores flag their top 10% of steps


def _scores(history: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float]]:
    steps, spectral, alarm = [], [], []
    ratio = [r[metrics.LR] / r[metrics.NTK_BATCH_ETA_CRIT]
             if r.get(metrics.NTK_BATCH_ETA_CRIT) else None for r in history]
    losses = [r.get(metrics.TRAIN_LOSS, r.get(metrics.LOSS)) for r in history]
    for t in range(ROLLING, len(history)):
        recent = [v for v in ratio[t - WINDOW + 1:t + 1] if v is not None]
        before = [v for v in losses[t - ROLLING:t] if v is not None]
        if not recent or not before or losses[t] is None:
            continue
        steps.append(history[t][metrics.STEP])
        spectral.append(max(recent))
        alarm.append(losses[t] / statistics.fmean(before))
    return steps, spectral, alarm


def _judge(steps: list[int], score: list[float], starts: list[int]) -> dict[str, Any]:
    labels = [any(t < s <= t + HORIZON for s in starts) for t in steps]
    cut = sorted(score, reverse=True)[max(int(FLAG_SHARE * len(score)) - 1, 0)] if score else 0
    flags = [v >= cut for v in score]
    hits = sum(f and y for f, y in zip(flags, labels))
    leads = []
    for s in starts:
        early = [t for t, f in zip(steps, flags) if f and s - HORIZON <= t < s]
        if early:
            leads.append(s - min(early))
    return {"auc": auc(score, labels), "precision": hits / sum(flags) if any(flags) else None,
            "recall": len(leads) / len(starts) if starts else None,
            "lead": statistics.median(leads) if leads else None, "positives": sum(labels)}


def _seed_run(out: Path, size: str, seed: int) -> dict[str, Any]:
    data = _synthetic(size, seed)
    cfg = _cfg(data=data, model={"width": _width(size), "depth": 2},
               train={"optimizer": "sgd", "lr": 1.0, "batch_size": 8, "seed": seed,
                      "steps": {"tiny": 150, "quick": 600, "full": 2000}[size],
                      "eval_every": 1, "test_every": 100,
                      "schedule": {"kind": "critical", "milestones": [0], "values": [0.8]}},
               monitor={"ntk": {"enabled": True, "every": 10, "k": 1, "batch": True,
                                "probe_size": min(256, data["n_train"])},
                        "events": {"enabled": True}},
               output={"figures": False})
    res = _run(cfg, out / "runs" / f"prediction-seed{seed}")
    path = res.dir / "events.json"
    starts = [e["start"] for e in json.loads(path.read_text())["events"]] if path.is_file() else []
    steps, spectral, alarm = _scores(res.history)
    return {"seed": seed, "status": res.status, "catapults": len(starts),
            **{f"spectral_{k}": v for k, v in _judge(steps, spectral, starts).items()},
            **{f"loss_alarm_{k}": v for k, v in _judge(steps, alarm, starts).items()},
            "_curves": (steps, spectral, alarm, starts)}


def prediction_claims(rows: list[dict[str, Any]]) -> list[Claim]:
    spec = [r["spectral_auc"] for r in rows]
    alarm = [r["loss_alarm_auc"] for r in rows]
    d = paired_differences(spec, alarm)
    return [
        make_claim("beyond/prediction-auc", "prediction",
                   f"AUC of the spectral score for a catapult starting within {HORIZON} steps",
                   spec, control="AUC 0.5: a score unrelated to catapults",
                   lead=[r["spectral_lead"] for r in rows]),
        make_claim("beyond/prediction-auc-gain-vs-loss-alarm", "prediction",
                   "AUC of the spectral score - AUC of the loss alarm (paired by seed)", d,
                   control=f"loss / mean of the {ROLLING} losses before it",
                   d_z=effect_size(d), loss_alarm_auc=alarm),
    ]


def fig_prediction(row: dict[str, Any], path: Path) -> Path:
    steps, spectral, alarm, starts = row["_curves"]
    plt = _plt()
    fig, (a, b) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    a.plot(steps, spectral, lw=0.7, color="C4", label=f"max eta/eta_crit(B), last {WINDOW}")
    a.axhline(1.0, color="k", lw=0.6, ls=":", label="eta = eta_crit(B)")
    b.plot(steps, alarm, lw=0.7, color="C1", label=f"loss / mean of last {ROLLING}")
    for ax in (a, b):
        for i, s in enumerate(starts):
            ax.axvline(s, color="C3", lw=0.6, alpha=0.6, label="catapult start" if i == 0 else None)
        ax.legend(fontsize=8, loc="upper right")
    a.set_ylabel("spectral score")
    b.set_ylabel("loss alarm score")
    b.set_xlabel("step")
    a.set_title(f"Predicting catapults {HORIZON} steps ahead (seed {row['seed']})")
    return _save(fig, path)


def exp_prediction(out: Path, size: str) -> tuple[list[Claim], list[dict[str, Any]], Path]:
    rows = [_seed_run(out, size, seed) for seed in _seeds(size)]
    fig = fig_prediction(rows[0], out / "prediction.png")
    table = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return prediction_claims(rows), table, fig
