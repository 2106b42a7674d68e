"""The NTK monitor: top eigenvalues, critical learning rates and the top-eigenspace loss split,
tracked during training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from catapults import metrics, ntk
from catapults.curvature.stability import (
    adam_started,
    edge_from_kernel,
    optimizer_edge,
    preconditioned_kernel,
)
from catapults.errors import CatapultsError
from catapults.training.callbacks import Callback, StepContext

UNKNOWN_EDGE: dict[str, Any] = {"kind": "unknown"}
"""The edge of an optimizer without a known one (RMSprop, ...): no threshold at all, rather than
GD's, which would be wrong."""


def _own_edge(optimizer: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    """The optimizer's edge when it differs from GD's on the plain kernel (SGD with momentum,
    Nesterov or weight decay; Adam, whose edge is on the preconditioned kernel),
    :data:`UNKNOWN_EDGE` for an optimizer without a known edge, None otherwise (plain SGD)."""
    if optimizer is None:
        return None
    try:
        edge = optimizer_edge(optimizer)
    except CatapultsError:
        return UNKNOWN_EDGE
    moving = edge["kind"] in ("momentum", "nesterov", "adam")
    return edge if moving or (edge["kind"] == "gd" and edge["weight_decay"] > 0) else None


def batch_edge(row: dict[str, Any]) -> float:
    """The critical rate a row's lr is compared with for the early warning: the run's
    optimizer's edge on the batch (``ntk/batch_edge``: momentum / Nesterov / weight decay /
    Adam) when recorded, else ``ntk/batch_eta_crit`` (GD's). A row recorded with no edge (Adam
    before its first step; an optimizer without a known edge): ``inf``, never flagged."""
    if metrics.NTK_BATCH_EDGE in row:
        v = row[metrics.NTK_BATCH_EDGE]
        return math.inf if v is None else v
    return row[metrics.NTK_BATCH_ETA_CRIT]

class NTKMonitor(Callback):
    """Track the empirical NTK spectrum and the top-eigenspace loss split.

    Every ``every`` steps, on a fixed probe set ``(X, y)`` (``n`` samples, ``c`` outputs), at the
    parameters ``θ_t`` before update ``t``: ``λ_1..λ_k`` of the full kernel, ``η_crit = n·c/λ_1``,
    the critical level ``n·c/η_t`` and ``(L, L_top, L_rest)`` for the top ``s`` eigenvectors
    (``s`` fixed, or by default the number of ``λ_i > n·c/η_t``, at least 1, at most ``k``),
    and ``L_top`` for every ``s = 1..k`` (``ntk/L_top_by_s``).
    With ``batch=True`` (mini-batch training) also, every step, ``λ_max(K_B)`` and
    ``η_crit(B) = b·c/λ_max(K_B)`` of the current batch. Keys are written as ``ntk/...``.

    ``method``: ``"dense"`` forms the kernel (fast; reuses its forward pass), ``"lanczos"``
    never forms it (``K v = J(Jᵀv)``, for probes too large to hold; its products come from the
    layer rules' stored factors when they fit in half of ``memory_budget``, else from a VJP and a
    JVP per vector: :func:`catapults.ntk.ntk_matvec`), ``"auto"`` is dense up to
    ``max_dense`` rows of the full kernel (``n·c``), else Lanczos. Both warm-start from the last
    eigenvectors.

    ``kernel_method`` is how a dense kernel is computed (``empirical_ntk``'s ``method``:
    ``auto``, ``rules``, ``jacobian``, ``matvec``; the table of :mod:`catapults.curvature.ntk`),
    for the probe and the batch kernels, within ``memory_budget`` bytes on the generic path.

    Outside the trainer: ``row = monitor.measure(model, lr)`` returns the same figures.
    """

    name = "ntk"

    def __init__(self, X: Tensor | None, y: Tensor | None, *, k: int = 5, every: int = 10,
                 s: int | None = None, batch: bool = True, method: str = "auto",
                 max_dense: int = 6000, kernel_method: str = "auto",
                 memory_budget: float = 2e9) -> None:
        if method not in ("auto", "dense", "lanczos"):
            raise ValueError(f"method must be 'auto', 'dense' or 'lanczos', got {method!r}")
        if kernel_method not in ntk.METHODS:
            raise ValueError(f"kernel_method must be one of {', '.join(ntk.METHODS)}, got "
                             f"{kernel_method!r}")
        self.kernel = {"method": kernel_method, "memory_budget": memory_budget}
        if (X is None) != (y is None):
            raise ValueError("give both X and y of the probe set, or neither")
        self.X, self.y = X, (None if y is None or X is None else y.reshape(X.shape[0], -1))
        self.k, self.every, self.s = k, every, s
        self.batch = batch
        # the full kernel is (n*c) x (n*c): formed densely up to max_dense rows, else matrix-free
        if method == "auto":
            method = "dense" if self.y is None or self.y.numel() <= max_dense else "lanczos"
        self.method = method
        self._vecs: Tensor | None = None
        self.rows: list[dict[str, Any]] = []
        self.batch_rows: list[dict[str, Any]] = []

    def measure(self, model: nn.Module, lr: float) -> dict[str, Any]:
        X, y = self.X, self.y
        nc = y.numel()
        if self.method == "lanczos":
            vals, vecs = ntk.top_eigenpairs(model, X, self.k, kind="full", method="lanczos",
                                            v0=self._vecs,
                                            memory_budget=self.kernel["memory_budget"])
        else:
            K, out = ntk.empirical_ntk(model, X, kind="full", check=False, return_outputs=True,
                                       **self.kernel)
            vals, vecs = ntk.eig_top(K, self.k, v0=self._vecs)
        self._vecs = vecs
        level = nc / lr
        s = self.s or max(1, int((vals > level).sum()))
        s = min(s, vals.numel())
        if self.method == "lanczos":
            with torch.no_grad():
                out = model(X)
        r = (out.reshape(y.shape) - y).reshape(-1)  # the kernel's own forward pass
        L, L_top, L_rest = ntk.split_from_eigvecs(r, vecs[:, :s])
        lam = [float(v) for v in vals]
        by_s = ((vecs.T @ r).pow(2).cumsum(0) / nc).tolist()  # L_top for s = 1..k
        return {metrics.NTK_LAMBDA: lam, metrics.NTK_ETA_CRIT: ntk.critical_rate(nc, lam[0]),
                metrics.NTK_CRITICAL_LEVEL: level, metrics.NTK_S: s, metrics.NTK_L: L,
                metrics.NTK_L_TOP: L_top, metrics.NTK_L_REST: L_rest,
                metrics.NTK_L_TOP_BY_S: by_s}

    def on_train_begin(self, state: StepContext) -> None:
        if self.X is None or self.y is None:
            return
        ntk.check_per_sample(state.model, self.X.to(state.device))
        dtype = state.dtype
        self.X, self.y = self.X.to(state.device, dtype), self.y.to(state.device, dtype)
        if self._vecs is not None:  # warm start loaded from a checkpoint
            self._vecs = self._vecs.to(state.device, dtype)

    def state_dict(self) -> dict[str, Any]:
        """The warm-start eigenvectors and the rows measured so far."""
        return {"vecs": self._vecs, "rows": self.rows, "batch_rows": self.batch_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._vecs = state["vecs"]
        self.rows, self.batch_rows = list(state["rows"]), list(state["batch_rows"])

    def on_step_begin(self, state: StepContext, X: Tensor, y: Tensor,
                      record: dict[str, Any]) -> None:
        if self.batch and not state.full_batch and state.lr > 0 and X is not None:
            Kb = ntk.empirical_ntk(state.model, X, kind="full", check=False, **self.kernel)
            lam_b = float(torch.linalg.eigvalsh(Kb)[-1])
            row = {metrics.NTK_BATCH_LAMBDA_MAX: lam_b,
                   metrics.NTK_BATCH_ETA_CRIT: ntk.critical_rate(Kb.shape[0], lam_b)}
            edge = _own_edge(state.optimizer)
            if edge is not None:  # the early warning compares lr with the optimizer's own edge
                row[metrics.NTK_BATCH_EDGE] = self._batch_edge(state, X, edge, lam_b, Kb.shape[0])
            record.update(row)
            self.batch_rows.append({"step": state.step, "lr": state.lr, **row})
        if self.X is not None and state.step % self.every == 0 and state.lr > 0:
            row = self.measure(state.model, state.lr)
            record.update(row)
            self.rows.append({"step": state.step, "lr": state.lr, **row})

    @staticmethod
    def _batch_edge(state: StepContext, X: Tensor, edge: dict[str, Any], lam_b: float,
                    nc: int) -> float | None:
        """The optimizer's critical rate on the batch ``X``: from ``λ_max(K_B)`` (``lam_b``),
        or for Adam from the batch's preconditioned kernel ``J_B P⁻¹ J_Bᵀ`` with ``P`` as it is
        now (None before Adam's first step, and for an optimizer without a known edge)."""
        if edge is UNKNOWN_EDGE:
            return None
        if edge["kind"] != "adam":
            return edge_from_kernel(lam_b, nc, edge)
        if not adam_started(state.optimizer):
            return None
        Kp = preconditioned_kernel(state.model, X, state.optimizer)
        return edge_from_kernel(float(torch.linalg.eigvalsh(Kp)[-1]), nc, edge)

    def on_train_end(self, state: StepContext, summary: dict[str, Any]) -> None:
        out: dict[str, Any] = {"probe_size": 0 if self.X is None else int(self.X.shape[0]),
                               "measurements": len(self.rows)}
        if self.rows:
            out["initial_lambda"] = self.rows[0][metrics.NTK_LAMBDA]
            out["final_lambda"] = self.rows[-1][metrics.NTK_LAMBDA]
            out["initial_eta_crit"] = self.rows[0][metrics.NTK_ETA_CRIT]
            out["final_eta_crit"] = self.rows[-1][metrics.NTK_ETA_CRIT]
        if self.batch_rows:
            crossed = sum(r["lr"] > batch_edge(r) for r in self.batch_rows)
            out["batch_steps_above_critical"] = crossed
            out["batch_steps"] = len(self.batch_rows)
        summary["monitors"]["ntk"] = out

    def write_artifacts(self, run_dir: str | Path, *, figures: bool = True) -> None:
        if figures and self.rows:
            from catapults.plotting import plot_loss_split, plot_spectrum

            plot_loss_split(self.rows, Path(run_dir) / "figures" / "ntk_loss_split.png")
            plot_spectrum(self.rows, Path(run_dir) / "figures" / "ntk_spectrum.png",
                          batch_rows=self.batch_rows)
