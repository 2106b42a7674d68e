"""beyond/activations: do catapults help generalisation for other activations (open question
3)? For relu, gelu, tanh and sigmoid: full-batch GD on the synthetic task, the same network
(per seed) with 3 raises to 1.3x the critical rate measured at each raise against the same steps
at 0.9x the initial critical rate (no catapult); paired test-loss and AGOP-alignment gains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catapults.experiments.claims import Claim, make_claim
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
)
from catapults.experiments.stats import effect_size, paired_differences

ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid")
RAISES = 3


def _runs(out: Path, size: str, seed: int, activation: str) -> list[dict[str, Any]]:
    data = _synthetic(size, seed)
    gap = {"tiny": 50, "quick": 80, "full": 150}[size]
    steps = 40 + gap * (RAISES + 1)
    G, X = _synthetic_reference(data)
    rows = []
    for k in (0, RAISES):
        cfg = _cfg(data=data, model={"width": {"tiny": 256, "quick": 512, "full": 1024}[size],
                                     "depth": 2, "activation": activation},
                   train={"optimizer": "gd", "lr": 1.0, "steps": steps, "seed": seed,
                          "eval_every": 5,
                          "schedule": {"kind": "critical",
                                       "milestones": [0] + [40 + gap * i for i in range(k)],
                                       "values": [0.9] + [1.3] * k}},
                   monitor={"events": {"enabled": True}}, output={"figures": False})
        res = _run(cfg, out / "runs" / f"act-{activation}-raises{k}-seed{seed}")
        rows.append({"activation": activation, "seed": seed, "raises": k,
                     "catapults": _events(res).get("count"), "status": res.status,
                     "final_test_loss": res.summary["final_test_loss"],
                     **_final_features(res, G, X)})
    return rows


def activation_claims(rows: list[dict[str, Any]]) -> list[Claim]:
    claims = []
    for act in ACTIVATIONS:
        mine = [r for r in rows if r["activation"] == act]
        seeds = sorted({r["seed"] for r in mine})

        def val(seed: int, k: int, key: str, mine=mine):
            r = next((r for r in mine if r["seed"] == seed and r["raises"] == k), None)
            return None if r is None or r["status"] != "completed" else r.get(key)

        d_test = paired_differences([val(s, 0, "final_test_loss") for s in seeds],
                                    [val(s, RAISES, "final_test_loss") for s in seeds])
        d_align = paired_differences([val(s, RAISES, "agop_alignment") for s in seeds],
                                     [val(s, 0, "agop_alignment") for s in seeds])
        control = "the same network and steps at 0.9 eta_crit(0), no raise"
        cats = [val(s, RAISES, "catapults") for s in seeds]
        claims += [
            make_claim(f"{act}:beyond/activation-test-gain", f"claim 3 ({act})",
                       f"test loss without raises - with {RAISES} raises (paired by seed)",
                       d_test, control=control, d_z=effect_size(d_test), catapults=cats),
            make_claim(f"{act}:beyond/activation-alignment-gain", f"claim 3 ({act})",
                       f"AGOP alignment with {RAISES} raises - without (paired by seed)",
                       d_align, control=control, d_z=effect_size(d_align), catapults=cats),
        ]
    return claims


def fig_activations(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, label in [(axes[0], "final_test_loss", "final test loss"),
                           (axes[1], "agop_alignment", "AGOP alignment")]:
        for i, act in enumerate(ACTIVATIONS):
            for k, marker in [(0, "o"), (RAISES, "s")]:
                pts = [r[key] for r in rows if r["activation"] == act and r["raises"] == k
                       and r.get(key) is not None]
                ax.plot([i + (0.15 if k else -0.15)] * len(pts), pts, marker, alpha=0.7,
                        color="C0" if k == 0 else "C3",
                        label=(f"{k} raises" if i == 0 else None))
        ax.set_xticks(range(len(ACTIVATIONS)), ACTIVATIONS)
        ax.set_xlabel("activation")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[0].set_title("Test loss without and with catapults (every seed)")
    axes[1].set_title("AGOP alignment without and with catapults")
    return _save(fig, path)


def exp_activations(out: Path, size: str) -> tuple[list[Claim], list[dict[str, Any]], Path]:
    rows = [r for act in ACTIVATIONS for seed in _seeds(size) for r in _runs(out, size, seed, act)]
    return activation_claims(rows), rows, fig_activations(rows, out / "activations.png")
