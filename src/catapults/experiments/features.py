"""Feature-learning measures of a trained model against the true AGOP, beside the cosine
alignment of docs/conventions.md: variants that show where a change of the AGOP comes from.

For the model's AGOP ``G`` and the true AGOP ``G*`` on the same inputs (``d × d``), and the
*target directions* ``P`` (the projector on the eigenvectors of ``G*`` whose eigenvalues exceed
``1e-6 λ_max(G*)``; for ``x1*x2`` the span of ``e1, e2``):

- ``agop_alignment``: ``ρ(G, G*)``, the cosine of the flattened matrices (the paper's measure);
- ``agop_sqrt_alignment``: ``ρ(G^½, G*^½)`` (square roots by ``eigh``, negative rounding
  clamped): the same with each direction weighted by its gradient scale instead of its square;
- ``target_trace_share``: ``tr(P G) / tr(G)``, the share of the model's input sensitivity that
  lies in the target directions;
- ``first_layer_alignment``: ``ρ(W₁ᵀW₁, G*)`` for the first layer's weight ``W₁`` (``(m, d)``,
  the first ``nn.Linear``-like module with ``d`` inputs; None when there is none, and for a
  linearised model, whose trained weights are not a layer's), the quantity the RFM literature
  calls the neural feature matrix;
- ``first_layer_energy``: ``‖W₁‖²_F``, the whole first layer's weight energy (what a weight-decay
  control is matched on);
- ``energy_target`` / ``energy_other``: ``‖W₁ P‖²_F / r`` and ``‖W₁ (I − P)‖²_F / (d − r)``, the
  first layer's weight energy per input direction, inside and outside the target directions
  (``r = rank P``). Runs that share an initialisation compare directly: a catapult that shrinks
  the irrelevant directions more than the target ones shows up as a fall of ``energy_other``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from catapults.agop import agop, alignment

__all__ = ["feature_metrics", "first_layer_energy", "target_projector"]


def target_projector(G_true: Tensor, *, rel: float = 1e-6) -> Tensor:
    """The ``d × d`` projector on the eigenvectors of ``G_true`` above ``rel·λ_max``."""
    vals, vecs = torch.linalg.eigh(G_true.double())
    keep = vecs[:, vals > rel * vals.max().clamp_min(0)]
    return keep @ keep.T


def _sqrt_psd(A: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(A.double())
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def _first_layer(model: nn.Module, d: int | None = None) -> Tensor | None:
    """The first trainable 2-D ``weight`` (with ``d`` inputs when ``d`` is given)."""
    if callable(getattr(model, "tangent_module", None)):  # a linearised model: no such layer
        return None
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if (isinstance(w, Tensor) and w.dim() == 2 and w.requires_grad
                and (d is None or w.shape[1] == d)):
            return w.detach()
    return None


def first_layer_energy(model: nn.Module) -> float | None:
    """``‖W₁‖²_F`` of the first trainable 2-D weight (float64; None when there is none)."""
    W = _first_layer(model)
    return None if W is None else float(W.double().pow(2).sum())


def feature_metrics(model: nn.Module, X: Tensor, G_true: Tensor) -> dict[str, float | None]:
    """The measures of the module docstring for ``model`` on inputs ``X`` (``(n, d)``) against
    the true AGOP ``G_true`` (``(d, d)``), as Python floats (the AGOP in the model's dtype and
    device, the rest in float64). The model is not changed."""
    p = next(model.parameters())
    G = agop(model, X.to(device=p.device, dtype=p.dtype)).double().cpu()
    Gt = G_true.double().cpu()
    P = target_projector(Gt)
    r = int(round(float(torch.trace(P))))
    d = Gt.shape[0]
    out: dict[str, float | None] = {
        "agop_alignment": float(alignment(G, Gt)),
        "agop_sqrt_alignment": float(alignment(_sqrt_psd(G), _sqrt_psd(Gt))),
        "target_trace_share": float(torch.trace(P @ G) / torch.trace(G)),
        "first_layer_alignment": None, "first_layer_energy": None, "energy_target": None,
        "energy_other": None,
    }
    W = _first_layer(model, d)
    if W is not None:
        W = W.double().cpu()
        out["first_layer_alignment"] = float(alignment(W.T @ W, Gt))
        out["first_layer_energy"] = float(W.pow(2).sum())
        out["energy_target"] = float((W @ P).pow(2).sum()) / max(r, 1)
        out["energy_other"] = (float((W @ (torch.eye(d, dtype=W.dtype) - P)).pow(2).sum())
                               / max(d - r, 1))
    return out
