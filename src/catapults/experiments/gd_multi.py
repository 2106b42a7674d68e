"""gd-multi: multiple catapults from learning-rate raises in full-batch GD; test loss and AGOP
alignment against the number of catapults, over seeds, against three controls (the schedule kept
below the critical rate, a smooth ramp to the same final learning rate, and the below-critical
schedule with the weight decay that shrinks the first layer as much as the raises did). Its runs,
claims and figure also serve ``real``.
"""

from __future__ import annotations

import math
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
    _width,
    _write_csv,
)
from catapults.experiments.features import first_layer_energy
from catapults.experiments.stats import effect_size, paired_differences, spearman
from catapults.runs import RunResult

WD_TRIES = 3
"""Runs of the weight-decay control's search (a first guess, then secant steps)."""
WD_MATCH = 0.05
"""The search stops when the control's ``‖W₁‖²`` is within this relative distance of the target."""


def _lr_integral(result: RunResult) -> float:
    """``Σ_t η_t`` over the run's steps, from its metrics rows (each row's lr held until the
    next row)."""
    rows = [(r["step"], r["lr"]) for r in result.history
            if r.get("lr") is not None and r.get("step") is not None]
    return sum(lr * (nxt[0] - step) for (step, lr), nxt in zip(rows, rows[1:])) + (
        rows[-1][1] if rows else 0.0)


def _match_weight_decay(run_with: Callable[[float, int], RunResult], base: RunResult,
                        target: float, *, tries: int = WD_TRIES
                        ) -> tuple[RunResult, float, int] | None:
    """The weight-decay control: ``run_with(λ, attempt)`` trains the baseline's schedule with
    coupled weight decay ``λ``; the run whose final ``‖W₁‖²`` comes closest to ``target`` (the
    treatment's) within ``tries`` runs is returned with its ``λ`` and the number of runs tried.

    First guess: decay alone multiplies ``‖W₁‖²`` by ``Π(1 − η_t λ)² ≈ exp(−2λ Σ_t η_t)``, so
    ``λ₀ = ln(E_base / target) / (2 Σ η_t)`` (the gradient pulls the weights back, so this
    undershoots); then secant steps on ``ln E(λ) − ln target``, starting through
    ``(0, ln E_base − ln target)``. A diverged try halves ``λ``. None when the treatment did not
    shrink ``‖W₁‖`` (nothing to match) or the energies are unknown.
    """
    e_base = first_layer_energy(base.model) if base.status == "completed" else None
    if e_base is None or not target or target >= e_base:
        return None
    goal = math.log(target)
    pts = [(0.0, math.log(e_base) - goal)]  # (λ, ln E(λ) − ln target)
    lam = math.log(e_base / target) / (2 * max(_lr_integral(base), 1e-12))
    best: tuple[float, RunResult, float] | None = None
    for attempt in range(tries):
        res = run_with(lam, attempt)
        e = first_layer_energy(res.model) if res.status == "completed" else None
        if e is None:  # diverged: back off
            lam /= 2
            continue
        f = math.log(e) - goal
        if best is None or abs(f) < best[0]:
            best = (abs(f), res, lam)
        if abs(f) < math.log1p(WD_MATCH):
            break
        (l0, f0), pts = pts[-1], [*pts, (lam, f)]
        step = lam - f * (lam - l0) / (f - f0) if f != f0 else 2 * lam
        lam = step if 0 < step < 100 * lam else (2 * lam if f > 0 else lam / 2)
    if best is None:
        return None
    return best[1], best[2], attempt + 1


def _levels(size: str) -> tuple[int, int]:
    """(K, gap): runs with 0..K raises (K + 1 >= 5 levels for the rank correlations), ``gap``
    steps apart."""
    return 4, {"tiny": 60, "quick": 100, "full": 150}[size]


def _multi_runs(out: Path, size: str, data: dict[str, Any], *, tag: str, seed: int = 0,
                reference: Callable[[list[RunResult]], tuple[torch.Tensor, torch.Tensor]]
                | None = None, model: dict[str, Any] | None = None, gap: int | None = None,
                run_figures: bool = True) -> tuple[list[dict[str, Any]], list[RunResult]]:
    """One seed's runs: k = 0..K learning-rate raises to 1.3x the critical rate measured at the
    raise (k = 0: 0.9x the initial critical rate throughout, the below-critical baseline), and
    the *ramp* control: the same start and the same final learning rate as the run with the most
    raises that completed (K unless it diverged), reached by a linear ramp (many small steps)
    between its first and last raise; and the *weight-decay* control: the baseline's schedule
    with the weight decay that shrinks the first layer's ``‖W₁‖²`` as much as those raises did
    (:func:`_match_weight_decay`).

    ``model`` overrides the model section (default: the MLP of width :func:`_width` and depth
    2; ``reproduce architectures`` passes a cnn, wrn or vit), ``gap`` the steps between raises
    (default :func:`_levels`; the runs last ``40 + gap (K + 1)`` steps); ``run_figures=False``
    skips the per-run figures of seed 0's raise runs (the tests' tiny size)."""
    K, default_gap = _levels(size)
    gap = default_gap if gap is None else gap
    steps = 40 + gap * (K + 1)
    results, rows = [], []

    def train(schedule: dict[str, Any], lr: float = 1.0) -> dict[str, Any]:
        return {"optimizer": "gd", "lr": lr, "steps": steps, "eval_every": 10, "seed": seed,
                "schedule": schedule}

    def record(res: RunResult, raises: int | None, kind: str, **extra: Any) -> None:
        ev = _events(res)
        results.append(res)
        rows.append({"seed": seed, "kind": kind, "raises": raises, **extra,
                     "catapults": ev.get("count"),
                     # catapults no lr change explains (the edge of stability), counted apart
                     "spontaneous": (ev.get("causes") or {}).get("spontaneous"),
                     "loss_noise_sigma": (ev.get("calibration") or {}).get("sigma"),
                     "status": res.status, "final_lr": res.history[-1]["lr"],
                     "final_train_loss": res.summary["final_train_loss"],
                     "final_test_loss": res.summary["final_test_loss"],
                     "final_test_error": res.summary.get("final_test_error")})

    model = {"width": _width(size), "depth": 2} if model is None else model
    for k in range(K + 1):
        milestones = [0] + [40 + gap * i for i in range(k)]
        cfg = _cfg(data=data, model=model,
                   train=train({"kind": "critical", "milestones": milestones,
                                "values": [0.9] + [1.3] * k}),
                   monitor={"events": {"enabled": True}},
                   output={"figures": run_figures and seed == 0})
        record(_run(cfg, out / "runs" / f"{tag}-raises{k}-seed{seed}"), k, "raises")
    done = [k for k, res in enumerate(results) if res.status == "completed" and k > 0]
    if done:  # the ramp to the final lr of the most raises that completed (the treatment)
        top, k_top = results[done[-1]], done[-1]
        lr0, lr1 = top.history[0]["lr"], top.history[-1]["lr"]
        first, last = 40, 40 + gap * (k_top - 1)
        marks = list(range(first, last + 1, 5))
        values = [lr0 + (lr1 - lr0) * (m - first + 5) / (last - first + 5) for m in marks]
        cfg = _cfg(data=data, model=model,
                   train=train({"kind": "step", "milestones": marks, "values": values}, lr0),
                   monitor={"events": {"enabled": True}}, output={"figures": False})
        record(_run(cfg, out / "runs" / f"{tag}-ramp-seed{seed}"), None, "ramp")

        def with_decay(lam: float, attempt: int) -> RunResult:
            cfg = _cfg(data=data, model=model,
                       train={**train({"kind": "critical", "milestones": [0], "values": [0.9]}),
                              "weight_decay": lam},
                       monitor={"events": {"enabled": True}}, output={"figures": False})
            return _run(cfg, out / "runs" / f"{tag}-weight-decay-try{attempt}-seed{seed}")

        target = first_layer_energy(top.model)
        match = _match_weight_decay(with_decay, results[0], target) if target else None
        if match is not None:
            res, lam, tried = match
            e = first_layer_energy(res.model)
            record(res, None, "weight-decay", weight_decay=lam, weight_decay_tries=tried,
                   energy_vs_treatment=None if e is None else e / target)
    G_ref, X_ref = reference(results) if reference else _synthetic_reference(data)
    for row, res in zip(rows, results):
        row.update(_final_features(res, G_ref, X_ref))
    return rows, results


VARIANTS = ("agop_sqrt_alignment", "target_trace_share", "first_layer_alignment")
"""Feature-learning measures reported beside the cosine alignment (experiments.features)."""


def _by_seed(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r.get("seed", 0), []).append(r)
    return out


def _pick(rows: list[dict[str, Any]], kind: str, raises: int | None = None) -> dict | None:
    return next((r for r in rows if r.get("kind", "raises") == kind
                 and (raises is None or r["raises"] == raises)), None)


def _value(row: dict | None, key: str) -> float | None:
    return None if row is None or row.get("status") != "completed" else row.get(key)


CONTROLS = ("baseline", "ramp", "weight-decay")
"""The controls each K-raise run is paired with (rows of kind ``raises`` with 0 raises, ``ramp``
and ``weight-decay``)."""


def _multi_claims(prefix: str, rows: list[dict[str, Any]]) -> list[Claim]:
    """The claims over seeds: per seed, rank correlations over the 0..K raise levels, and
    paired differences of the K-raise run against its controls (:data:`CONTROLS`: the
    below-critical baseline, k = 0; the smooth ramp to the same final learning rate; the
    weight decay that shrinks the first layer as much)."""
    seeds = _by_seed(rows)
    follow, align, test, spontaneous = [], [], [], []
    # per control, the paired gains of the treatment: test loss (control - treatment) and
    # alignment (treatment - control), one entry per seed
    d_test: dict[str, list[float | None]] = {c: [] for c in CONTROLS}
    d_align: dict[str, list[float | None]] = {c: [] for c in CONTROLS}
    ramp_catapults, wd_catapults, wd_energy, wd_values = [], [], [], []
    variant_gain: dict[str, list[float | None]] = {key: [] for key in VARIANTS}
    top_levels: list[int | None] = []
    other_ratio: list[float | None] = []
    target_ratio: list[float | None] = []
    for srows in seeds.values():
        lv = sorted((r for r in srows if r.get("kind", "raises") == "raises"),
                    key=lambda r: r["raises"])
        k = [r["raises"] for r in lv]
        c = [r["catapults"] for r in lv]
        done = [r for r in lv if r["status"] == "completed"]
        follow.append(spearman(k, c))
        spontaneous.append(sum(r.get("spontaneous") or 0 for r in lv))
        align.append(spearman([r["catapults"] for r in done], [r["agop_alignment"] for r in done]))
        test.append(spearman([r["catapults"] for r in done], [r["final_test_loss"] for r in done]))
        # the treatment: the most raises that completed in this seed (K, or fewer when the
        # K-raise run diverged: a diverged model has no test loss), against its controls
        top = next((r for r in reversed(lv) if r["status"] == "completed" and r["raises"] > 0),
                   None)
        controls = {"baseline": _pick(srows, "raises", 0), "ramp": _pick(srows, "ramp"),
                    "weight-decay": _pick(srows, "weight-decay")}
        base, ramp, wd = controls.values()
        top_levels.append(None if top is None else top["raises"])
        for name, ctrl in controls.items():
            d_test[name] += paired_differences([_value(ctrl, "final_test_loss")],
                                               [_value(top, "final_test_loss")])
            d_align[name] += paired_differences([_value(top, "agop_alignment")],
                                                [_value(ctrl, "agop_alignment")])
        ramp_catapults.append(None if ramp is None else ramp["catapults"])
        wd_catapults.append(None if wd is None else wd["catapults"])
        wd_energy.append(None if wd is None else wd.get("energy_vs_treatment"))
        wd_values.append(None if wd is None else wd.get("weight_decay"))
        for key in VARIANTS:
            variant_gain[key] += paired_differences([_value(top, key)], [_value(base, key)])
        b_other, t_other = _value(base, "energy_other"), _value(top, "energy_other")
        b_tgt, t_tgt = _value(base, "energy_target"), _value(top, "energy_target")
        other_ratio.append(t_other / b_other if b_other and t_other is not None else None)
        target_ratio.append(t_tgt / b_tgt if b_tgt and t_tgt is not None else None)
    base_name = "k = 0: the same steps at 0.9 eta_crit(0), no catapult"
    ramp_name = ("the same start and final lr as the run compared (the most raises that "
                 "completed), reached by a linear ramp "
                 "(the final lr without the raises)")
    wd_name = ("the baseline's schedule (0.9 eta_crit of the optimizer with weight decay) with "
               "the coupled weight decay whose final first-layer ||W1||^2 matches the run "
               "compared (the shrinkage without the catapults)")
    wd_detail = {"weight_decay_catapults": wd_catapults, "weight_decay": wd_values,
                 "energy_vs_treatment": wd_energy}
    return [
        make_claim(f"{prefix}gd-multi/catapults-follow-raises", "multiple catapults",
                   "Spearman(number of lr raises, catapults detected) over the levels of a seed",
                   follow, spontaneous_catapults=spontaneous),
        make_claim(f"{prefix}gd-multi/alignment-vs-catapults", "claim 3",
                   "Spearman(catapults, AGOP alignment) over the levels of a seed", align),
        make_claim(f"{prefix}gd-multi/test-loss-vs-catapults", "claim 3",
                   "Spearman(catapults, test loss) over the levels of a seed", test),
        make_claim(f"{prefix}gd-multi/test-loss-gain-vs-baseline", "claim 3",
                   "test loss of the baseline - test loss after the most raises that "
                   "completed (K unless that run diverged; paired by seed)",
                   d_test["baseline"], control=base_name, d_z=effect_size(d_test["baseline"]),
                   raises_compared=top_levels),
        make_claim(f"{prefix}gd-multi/alignment-gain-vs-baseline", "claim 3",
                   "AGOP alignment after K raises - that of the baseline (paired by seed)",
                   d_align["baseline"], control=base_name,
                   d_z=effect_size(d_align["baseline"]),
                   # the variants of experiments.features, each as the same paired gain
                   **{f"{key}_gain": variant_gain[key] for key in VARIANTS}),
        make_claim(f"{prefix}gd-multi/irrelevant-energy-ratio-vs-baseline", "claim 3 (mechanism)",
                   "first-layer weight energy per direction outside the target directions, "
                   "after K raises / the baseline's (same initialisation, paired by seed)",
                   other_ratio, control=base_name, target_directions_ratio=target_ratio),
        make_claim(f"{prefix}gd-multi/test-loss-gain-vs-ramp", "claim 3 (confound)",
                   "test loss of the ramp - test loss after K raises (paired by seed)",
                   d_test["ramp"], control=ramp_name, d_z=effect_size(d_test["ramp"]),
                   ramp_catapults=ramp_catapults),
        make_claim(f"{prefix}gd-multi/alignment-gain-vs-ramp", "claim 3 (confound)",
                   "AGOP alignment after K raises - that of the ramp (paired by seed)",
                   d_align["ramp"], control=ramp_name, d_z=effect_size(d_align["ramp"]),
                   ramp_catapults=ramp_catapults),
        make_claim(f"{prefix}gd-multi/test-loss-gain-vs-weight-decay", "claim 3 (confound)",
                   "test loss of the weight-decay control - test loss after K raises "
                   "(paired by seed)", d_test["weight-decay"], control=wd_name,
                   d_z=effect_size(d_test["weight-decay"]),
                   **wd_detail),
        make_claim(f"{prefix}gd-multi/alignment-gain-vs-weight-decay", "claim 3 (confound)",
                   "AGOP alignment after K raises - that of the weight-decay control "
                   "(paired by seed)", d_align["weight-decay"], control=wd_name,
                   d_z=effect_size(d_align["weight-decay"]), **wd_detail),
    ]


def _fig_multi(rows, results, path: Path, title: str) -> Path:
    """Left: the training loss of seed 0's runs. Middle and right: test loss and AGOP alignment
    against the number of catapults, every seed's runs as points (the ramp control as
    crosses, the weight-decay control as squares), each on its own axis (no twin axes that
    make small changes look large)."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    seed0 = min((r.get("seed", 0) for r in rows), default=0)
    for row, res in zip(rows, results):
        if row.get("seed", 0) != seed0:
            continue
        xs = [r["step"] for r in res.history if r.get("loss") is not None]
        ys = [r["loss"] for r in res.history if r.get("loss") is not None]
        kind = row.get("kind", "raises")
        label = (f"{row['raises']} raise(s): {row['catapults']} catapult(s)"
                 if kind == "raises" else f"{kind} control: {row['catapults']} catapult(s)")
        a.plot(xs, ys, lw=0.9, ls={"raises": "-", "ramp": ":"}.get(kind, "--"), label=label)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_title(f"{title} (seed {seed0})")
    a.legend(fontsize=7)
    for ax, key, label in [(b, "final_test_loss", "test loss"),
                           (c, "agop_alignment", "AGOP alignment")]:
        for kind, marker, name in [("raises", "o", "lr raises"), ("ramp", "x", "ramp control"),
                                   ("weight-decay", "s", "weight-decay control")]:
            pts = [(r["catapults"], r[key]) for r in rows if r.get("kind", "raises") == kind
                   and r["status"] == "completed" and r.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, ls="none",
                        alpha=0.7, label=name)
        means: dict[int, list[float]] = {}
        for r in rows:
            if (r.get("kind", "raises") == "raises" and r["status"] == "completed"
                    and r.get(key) is not None and r["catapults"] is not None):
                means.setdefault(r["catapults"], []).append(r[key])
        if means:
            xs = sorted(means)
            ax.plot(xs, [sum(means[x]) / len(means[x]) for x in xs], "-", color="k", lw=0.8,
                    label="mean over seeds")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("number of catapults")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    b.set_title("Test loss against catapults")
    c.set_title("AGOP alignment against catapults")
    return _save(fig, path)


def exp_gd_multi(out: Path, size: str) -> ExperimentResult:
    """Multiple catapults from learning-rate raises; test loss and AGOP alignment against them."""
    data = _synthetic(size)
    rows, results = [], []
    for seed in _seeds(size):
        r, res = _multi_runs(out, size, _synthetic(size, seed), tag="gd", seed=seed)
        rows += r
        results += res
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
