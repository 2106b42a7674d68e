"""What the `beyond` experiments share: a synthetic task as tensors, a plain full-batch GD loop
with a per-step learning-rate hook, and the final measures (test loss, AGOP alignment, catapults
found by the calibrated detector)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from catapults.config import config_from_dict
from catapults.data import make_dataset
from catapults.detect import find_catapults
from catapults.experiments.common import _synthetic
from catapults.experiments.features import feature_metrics
from catapults.models import build_model
from catapults.runs import model_spec


@dataclass
class Task:
    """A regression task as tensors (float32, CPU) with its exact true AGOP (None for real
    data, which has none)."""

    X: Tensor
    y: Tensor
    X_test: Tensor
    y_test: Tensor
    G_true: Tensor | None


def synthetic_task(size: str, seed: int) -> Task:
    data = make_dataset(config_from_dict({"data": _synthetic(size, seed)}).data)
    return Task(data.X_train, data.y_train, data.X_test, data.y_test,
                data.target.expected_agop())


def image_task_and_model(arch: str, *, size: str, seed: int, width: int
                         ) -> tuple[Task, nn.Module]:
    """Digits 3 vs 8 (scikit-learn's bundled 8x8 images, standardised; n = 64 tiny, else 200)
    as images, and a 2-layer ``arch`` (``cnn``, ``vit``, ``wrn``) of ``width`` in NTK
    parameterisation built for them exactly as a run would build it."""
    n = {"tiny": 64, "quick": 200, "full": 200}[size]
    cfg = config_from_dict({
        "data": {"name": "digits", "classes": [3, 8], "n_train": n, "n_test": 150,
                 "standardize": True, "seed": seed},
        "model": {"arch": arch, "width": width, "depth": 2, "parameterization": "ntk"},
        "train": {"seed": seed}})
    data = make_dataset(cfg.data)
    task = Task(data.X_train, data.y_train, data.X_test, data.y_test, None)
    return task, build_model(model_spec(cfg, data))


def mlp(task: Task, *, width: int, seed: int, activation: str = "relu",
        parameterization: str = "ntk") -> nn.Module:
    return build_model({"arch": "mlp", "in_dim": task.X.shape[1], "out_dim": 1, "seed": seed,
                        "width": width, "depth": 2, "activation": activation,
                        "parameterization": parameterization})


def gd(model: nn.Module, task: Task, steps: int, lr_of: Callable[[int, float], float], *,
       extra_loss: Callable[[nn.Module], Tensor] | None = None,
       optimizer: torch.optim.Optimizer | None = None) -> tuple[list[float], list[float]]:
    """Full-batch GD on the mean MSE for ``steps`` updates; ``lr_of(t, loss_t)`` gives the
    learning rate of update ``t`` (it may be a controller's ``step``). ``extra_loss(model)``
    adds a term to the objective (not to the recorded loss). Returns (losses, lrs); stops at a
    non-finite loss (the losses then end with it). ``optimizer``: plain SGD over the model's
    parameters to use (one a controller also writes to); by default a new one."""
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=0.0)
    losses: list[float] = []
    lrs: list[float] = []
    for t in range(steps):
        loss = nn.functional.mse_loss(model(task.X), task.y)
        losses.append(loss.item())
        if not torch.isfinite(loss):
            break
        lr = lr_of(t, losses[-1])
        lrs.append(lr)
        for g in opt.param_groups:
            g["lr"] = lr
        objective = loss if extra_loss is None else loss + extra_loss(model)
        opt.zero_grad()
        objective.backward()
        opt.step()
    return losses, lrs


def final_measures(model: nn.Module, task: Task, losses: list[float]) -> dict[str, Any]:
    """Test loss, AGOP alignment (and its variants) and the catapults of the loss curve; a run
    that diverged gets None for the model's measures."""
    ok = bool(losses) and all(torch.isfinite(torch.tensor(losses)).tolist())
    out: dict[str, Any] = {"status": "completed" if ok else "diverged",
                           "catapults": len(find_catapults(losses)) if ok else None,
                           "final_train_loss": losses[-1] if losses else None}
    if not ok:
        return {**out, "final_test_loss": None, "agop_alignment": None}
    with torch.no_grad():
        out["final_test_loss"] = nn.functional.mse_loss(model(task.X_test), task.y_test).item()
    if task.G_true is not None:
        out.update(feature_metrics(model, task.X_test[:2000], task.G_true))
    else:
        out["agop_alignment"] = None  # real data: no true AGOP
    return out
