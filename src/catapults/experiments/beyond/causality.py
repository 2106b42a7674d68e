"""beyond/agop-causality: does test loss follow AGOP alignment without any catapult (the
seed's check 2)?

Full-batch GD on the synthetic task at a fixed learning rate below the critical rate
(``0.5 η_crit(θ₀)``, no catapult), with a regulariser that pulls the network's AGOP towards the
true one (``μ > 0``) or pushes it away (``μ < 0``):
``objective = L(θ) + μ (1 − ρ(G_θ, G*))``, ``G_θ = (1/m) Σ_i ∇_x f(x_i) ∇_x f(x_i)ᵀ`` on a fixed
subset of ``m`` training inputs (differentiable: input gradients with ``create_graph``), ``ρ`` the
cosine of docs/conventions.md. Five doses, the same network per seed; the dose-response curve is
final alignment and test loss against ``μ``. The claim: over the doses of a seed, the rank
correlation of alignment and test loss is negative (higher alignment, lower test loss), and no
dose run catapults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from catapults.curvature.spectrum import critical_lr
from catapults.experiments.beyond.common import Task, final_measures, gd, mlp, synthetic_task
from catapults.experiments.claims import Claim, make_claim
from catapults.experiments.common import _plt, _save, _seeds
from catapults.experiments.stats import spearman

DOSES = (-0.3, 0.0, 0.3, 1.0, 3.0)
SUBSET = 128


def alignment_penalty(task: Task, mu: float):
    """``model -> μ (1 − ρ(G_θ, G*))`` on the first :data:`SUBSET` training inputs."""
    X = task.X[:SUBSET]
    G_true = task.G_true.to(X.dtype)

    def penalty(model: nn.Module) -> Tensor:
        x = X.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)  # (m, d), c = 1
        G = g.T @ g / x.shape[0]
        rho = (G * G_true).sum() / (G.norm() * G_true.norm()).clamp_min(1e-30)
        return mu * (1 - rho)

    return penalty


def _seed_runs(size: str, seed: int) -> list[dict[str, Any]]:
    task = synthetic_task(size, seed)
    steps = {"tiny": 120, "quick": 400, "full": 1000}[size]
    width = {"tiny": 256, "quick": 512, "full": 1024}[size]
    rows = []
    for mu in DOSES:
        model = mlp(task, width=width, seed=seed)
        lr = 0.5 * critical_lr(model, task.X)
        losses, _ = gd(model, task, steps, lambda t, loss, lr=lr: lr,
                       extra_loss=alignment_penalty(task, mu) if mu else None)
        rows.append({"seed": seed, "dose": mu, "lr": lr, **final_measures(model, task, losses)})
    return rows


def causality_claims(rows: list[dict[str, Any]]) -> list[Claim]:
    seeds = sorted({r["seed"] for r in rows})
    rho, cats = [], []
    for s in seeds:
        ok = [r for r in rows if r["seed"] == s and r["status"] == "completed"]
        rho.append(spearman([r["agop_alignment"] for r in ok],
                            [r["final_test_loss"] for r in ok]))
        mine = [r["catapults"] for r in rows if r["seed"] == s]
        cats.append(None if any(c is None for c in mine) else float(sum(mine)))
    return [
        make_claim("beyond/agop-causality-test-vs-alignment", "AGOP causality",
                   "Spearman(AGOP alignment, test loss) over the regulariser doses of a seed "
                   "(GD at 0.5 eta_crit: no catapult)", rho,
                   control="dose 0: the same GD without the regulariser", doses=list(DOSES)),
        make_claim("beyond/agop-causality-no-catapults", "AGOP causality",
                   "catapults detected over all dose runs of a seed", cats),
    ]


def fig_causality(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for s in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == s and r["status"] == "completed"]
        a.plot([r["dose"] for r in mine], [r["agop_alignment"] for r in mine], "o-", lw=0.8,
               label=f"seed {s}")
        b.plot([r["agop_alignment"] for r in mine], [r["final_test_loss"] for r in mine], "o",
               label=f"seed {s}")
    a.set_xlabel("regulariser dose mu (< 0: away from the true AGOP)")
    a.set_ylabel("final AGOP alignment")
    a.set_title("Dose -> alignment (GD below the critical rate)")
    b.set_xlabel("final AGOP alignment")
    b.set_ylabel("final test loss")
    b.set_title("Alignment -> test loss, without catapults")
    for ax in (a, b):
        ax.legend(fontsize=8)
    return _save(fig, path)


def exp_causality(out: Path, size: str) -> tuple[list[Claim], list[dict[str, Any]], Path]:
    rows = [r for seed in _seeds(size) for r in _seed_runs(size, seed)]
    return causality_claims(rows), rows, fig_causality(rows, out / "agop-causality.png")
