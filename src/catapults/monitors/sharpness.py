"""The sharpness monitor: the loss Hessian's top eigenvalue beside its Gauss-Newton part, and
the optimizer's own edge (issue 14; :mod:`catapults.curvature.hessian`,
:mod:`catapults.curvature.stability`).

Every ``every`` steps, on a fixed probe ``(X, y)`` at ``θ_t`` before update ``t``:
``sharpness/hessian`` (``λ_max(∇²L)``, warm-started Lanczos), ``sharpness/gauss_newton``
(``2 λ_max(K) / (n·c)``), for Adam ``sharpness/preconditioned`` (``λ_max(P⁻¹H)``), with
``batch_size`` the batch sharpness ``sharpness/batch`` (Monte Carlo over batches of the probe),
and ``sharpness/threshold``: the sharpness at which the optimizer with the current learning
rate loses stability (GD ``2/η``, heavy ball ``(2+2β)/η``, Nesterov ``(2+2β)/((1+2β)η)``, Adam
``(2+2β₁)/((1−β₁)η)`` for the preconditioned sharpness). The edge-of-stability picture:
sharpness rises to the threshold and hovers there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from catapults import metrics, ntk
from catapults.curvature.hessian import (
    batch_sharpness,
    hessian_top_eigenpairs,
    preconditioned_sharpness,
)
from catapults.curvature.stability import adam_started, optimizer_edge
from catapults.training.callbacks import Callback, StepContext


class SharpnessMonitor(Callback):
    """See the module docstring. ``X`` ``(n, ...)`` and ``y`` ``(n, c)`` form the probe."""

    name = "sharpness"

    def __init__(self, X: Tensor, y: Tensor, *, every: int = 10,
                 batch_size: int | None = None, batch_rel_se: float = 0.05) -> None:
        if int(every) < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.X, self.y = X, y.reshape(X.shape[0], -1)
        self.every, self.batch_size, self.batch_rel_se = int(every), batch_size, batch_rel_se
        self._vecs: Tensor | None = None
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, state: StepContext) -> None:
        ntk.check_per_sample(state.model, self.X.to(state.device))
        self.X = self.X.to(state.device, state.dtype)
        self.y = self.y.to(state.device, state.dtype)

    def measure(self, model: torch.nn.Module, lr: float,
                optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        """The figures of one measurement at the model's current parameters."""
        vals, vecs = hessian_top_eigenpairs(model, self.X, self.y, 1, v0=self._vecs)
        self._vecs = vecs
        nc = self.y.numel()
        row: dict[str, Any] = {metrics.SHARPNESS_HESSIAN: float(vals[0]),
                               metrics.SHARPNESS_GN: 2 * ntk.lambda_max(model, self.X) / nc}
        edge = optimizer_edge(optimizer)
        row[metrics.SHARPNESS_THRESHOLD] = 2 * edge["factor"] / lr if lr > 0 else None
        if edge["kind"] == "adam":  # none before Adam's first step (no second moments)
            row[metrics.SHARPNESS_PRECONDITIONED] = (
                preconditioned_sharpness(model, self.X, self.y, optimizer)
                if adam_started(optimizer) else None)
        if self.batch_size:
            est = batch_sharpness(model, self.X, self.y, min(self.batch_size, len(self.X)),
                                  rel_se=self.batch_rel_se, max_batches=200,
                                  generator=torch.Generator().manual_seed(len(self.rows)))
            row[metrics.SHARPNESS_BATCH] = est.mean
        return row

    def on_step_begin(self, state: StepContext, X: Tensor, y: Tensor,
                      record: dict[str, Any]) -> None:
        if state.step % self.every == 0 and state.lr > 0:
            row = self.measure(state.model, state.lr, state.optimizer)
            record.update(row)
            self.rows.append({"step": state.step, "lr": state.lr, **row})

    def on_train_end(self, state: StepContext, summary: dict[str, Any]) -> None:
        out: dict[str, Any] = {"measurements": len(self.rows)}
        if self.rows:
            last = self.rows[-1]
            out.update({k: last.get(k) for k in (metrics.SHARPNESS_HESSIAN, metrics.SHARPNESS_GN,
                                                 metrics.SHARPNESS_PRECONDITIONED,
                                                 metrics.SHARPNESS_BATCH,
                                                 metrics.SHARPNESS_THRESHOLD)
                        if last.get(k) is not None})
        summary["monitors"]["sharpness"] = out

    def state_dict(self) -> dict[str, Any]:
        return {"vecs": self._vecs, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._vecs, self.rows = state["vecs"], list(state["rows"])
