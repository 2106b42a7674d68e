"""The sharpness monitor: the loss Hessian's top eigenvalue beside its Gauss-Newton part, and
the optimizer's own edge (issue 14; :mod:`catapults.curvature.hessian`,
:mod:`catapults.curvature.stability`).

Every ``every`` steps, on a fixed probe ``(X, y)`` at ``θ_t`` before update ``t``:
``sharpness/hessian`` (``λ_max(∇²L)`` of the run's ``loss``: mean MSE or cross-entropy) with
the relative residual of a tracked value
``sharpness/hessian_residual``, ``sharpness/gauss_newton`` (``2 λ_max(K) / (n·c)``; off with
``gauss_newton=False``, and for cross-entropy, whose Gauss-Newton part is not of this form),
for Adam ``sharpness/preconditioned`` (``λ_max(P⁻¹H)``), with
``batch_size`` the batch sharpness ``sharpness/batch`` (Monte Carlo over batches of the probe),
and ``sharpness/threshold``: the sharpness at which the optimizer with the current learning
rate loses stability (GD ``2/η``, heavy ball ``(2+2β)/η``, Nesterov ``(2+2β)/((1+2β)η)``, Adam
``(2+2β₁)/((1−β₁)η)`` for the preconditioned sharpness). The edge-of-stability picture:
sharpness rises to the threshold and hovers there.

``method`` chooses how ``λ_max(H)`` is found:

- ``"lanczos"`` (default): block Lanczos to the dtype's precision, warm-started from the last
  eigenvector (a few block products of 4 vectors per measurement);
- ``"track"``: one Hessian-vector product per measurement (the cost for measuring every
  step): the Rayleigh quotient of the last vector and a power step
  (:func:`~catapults.curvature.hessian.hessian_power_step`); a Lanczos solve at the first
  measurement and whenever the residual exceeds ``track_tol`` (default 0.05). The Rayleigh
  quotient never exceeds ``λ_max``; the recorded residual says how close it is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from catapults import metrics, ntk
from catapults.curvature.hessian import (
    batch_sharpness,
    hessian_power_step,
    hessian_top_eigenpairs,
    preconditioned_sharpness,
)
from catapults.curvature.losses import get_loss
from catapults.curvature.stability import adam_started, optimizer_edge
from catapults.errors import CatapultsError
from catapults.training.callbacks import Callback, StepContext


class SharpnessMonitor(Callback):
    """See the module docstring. ``X`` ``(n, ...)`` and ``y`` ``(n, c)`` form the probe."""

    name = "sharpness"

    METHODS = ("lanczos", "track")

    def __init__(self, X: Tensor, y: Tensor, *, every: int = 10,
                 batch_size: int | None = None, batch_rel_se: float = 0.05,
                 method: str = "lanczos", track_tol: float = 0.05,
                 gauss_newton: bool = True, loss: str = "mse") -> None:
        if int(every) < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {', '.join(self.METHODS)}, got {method!r}")
        if not 0 < track_tol < 1:
            raise ValueError(f"track_tol must be in (0, 1), got {track_tol!r}")
        self.X, self.y = X, y.reshape(X.shape[0], -1)
        self.every, self.batch_size, self.batch_rel_se = int(every), batch_size, batch_rel_se
        self.method, self.track_tol = method, track_tol
        # the Gauss-Newton part as 2 λ_max(K)/(n·c) is the mean MSE's (the NTK form)
        get_loss(loss)  # refuses an unknown loss
        self.no_edge: str | None = None  # why no threshold is recorded (an unknown optimizer)
        self.gauss_newton, self.loss = gauss_newton and loss == "mse", loss
        self._vecs: Tensor | None = None
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, state: StepContext) -> None:
        ntk.check_per_sample(state.model, self.X.to(state.device))
        self.X = self.X.to(state.device, state.dtype)
        self.y = self.y.to(state.device, state.dtype)

    def measure(self, model: torch.nn.Module, lr: float,
                optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        """The figures of one measurement at the model's current parameters."""
        lam, res = self._hessian(model)
        nc = self.y.numel()
        row: dict[str, Any] = {metrics.SHARPNESS_HESSIAN: lam,
                               metrics.SHARPNESS_HESSIAN_RESIDUAL: res}
        if self.gauss_newton:
            row[metrics.SHARPNESS_GN] = 2 * ntk.lambda_max(model, self.X) / nc
        try:
            edge = optimizer_edge(optimizer)
        except CatapultsError as err:  # no known edge: no threshold, rather than a wrong one
            edge, self.no_edge = {"kind": "unknown", "factor": None}, str(err)
        row[metrics.SHARPNESS_THRESHOLD] = (2 * edge["factor"] / lr
                                            if lr > 0 and edge["factor"] else None)
        if edge["kind"] == "adam":  # none before Adam's first step (no second moments)
            row[metrics.SHARPNESS_PRECONDITIONED] = (
                preconditioned_sharpness(model, self.X, self.y, optimizer, loss=self.loss)
                if adam_started(optimizer) else None)
        if self.batch_size:
            est = batch_sharpness(model, self.X, self.y, min(self.batch_size, len(self.X)),
                                  rel_se=self.batch_rel_se, max_batches=200,
                                  generator=torch.Generator().manual_seed(len(self.rows)),
                                  loss=self.loss)
            row[metrics.SHARPNESS_BATCH] = est.mean
        return row

    def _hessian(self, model: torch.nn.Module) -> tuple[float, float | None]:
        """``(λ_max(H), relative residual)`` by the monitor's method, warm from the last
        vector; the residual is None when a Lanczos solve (converged to its tolerance) gave
        the value."""
        if self.method == "track" and self._vecs is not None:
            lam, res, nxt = hessian_power_step(model, self.X, self.y, self._vecs[:, 0],
                                               loss=self.loss)
            if res <= self.track_tol:
                self._vecs = nxt[:, None]
                return lam, res
        vals, vecs = hessian_top_eigenpairs(model, self.X, self.y, 1, v0=self._vecs,
                                            loss=self.loss)
        self._vecs = vecs
        return float(vals[0]), None

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
        if self.no_edge:
            out["threshold_note"] = self.no_edge
        summary["monitors"]["sharpness"] = out

    def state_dict(self) -> dict[str, Any]:
        return {"vecs": self._vecs, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._vecs, self.rows = state["vecs"], list(state["rows"])
