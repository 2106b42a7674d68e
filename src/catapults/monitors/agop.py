"""The AGOP monitor: alignment of the network's AGOP with the true (or a reference) AGOP, tracked
during training (docs/conventions.md; the paper's claim 3).

The reference (built from a config by :func:`catapults.runs.reference_agop_for`):

- synthetic data with a known target ``f*``: the exact expected AGOP ``E_x[∇f* ∇f*ᵀ]`` under
  ``x ~ N(0, I_d)`` (Gaussian moments for polynomial targets, see
  :meth:`catapults.data.targets.Target.expected_agop`);
- real data (or whenever ``monitor.agop.reference_run`` is given): the AGOP of another run's final
  model on this run's training inputs. The paper's choice for real data is not confirmed; this is
  a proxy for the unknown true AGOP (docs/conventions.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from catapults import metrics
from catapults.curvature import agop as agop_lib
from catapults.curvature.agop import FactoredAGOP, Matrix
from catapults.errors import ConfigError
from catapults.training.callbacks import Callback, StepContext


class AGOPMonitor(Callback):
    """Track ``ρ(G(f_θ, X), G_ref)``: the alignment of the network's AGOP on inputs ``X`` with a
    reference AGOP (docs/conventions.md).

    Every ``every`` steps at ``θ_t`` (before update ``t``) it writes ``agop/alignment`` into the
    metrics row; at the end it measures the final model again and puts ``initial_alignment``,
    ``final_alignment`` (and more) into ``summary["monitors"]["agop"]``. ``write_artifacts``
    saves ``agop.pt`` (the final ``d × d`` AGOP and its top eigenvalues), ``figures/agop.png``
    (heat maps of the top-left ``block × block`` corner of the final and the reference AGOP, and
    their top eigenvalues) and ``figures/agop_alignment.png`` (alignment against step).

    Args:
        X: inputs ``(n, ...)`` on which the network's AGOP is computed.
        reference_agop: ``d × d`` tensor or :class:`~catapults.agop.FactoredAGOP`
            (see :func:`catapults.runs.reference_agop_for`).
        every: measure every this many steps (and at the end).
        centered, sqrt: the variants of :func:`catapults.agop.alignment` (default: the plain
            cosine ρ).
        chunk_size: samples per forward/backward pass.
        block, top_k: size of the heat-map corner and number of eigenvalues in the figure.

    Outside the trainer: ``monitor.measure(model)`` returns ``ρ``.
    """

    name = "agop"

    def __init__(self, X: Tensor, reference_agop: Matrix, *, every: int = 50,
                 centered: bool = False, sqrt: bool = False,
                 chunk_size: int | None = agop_lib.DEFAULT_CHUNK, block: int = 20,
                 top_k: int = 20) -> None:
        d = int(X[0].numel())
        if tuple(reference_agop.shape) != (d, d):
            raise ConfigError(f"monitor.agop: the reference AGOP is {tuple(reference_agop.shape)}"
                              f", but the inputs have size {d}")
        if every < 1:
            raise ConfigError(f"monitor.agop.every: must be >= 1, got {every}")
        self.X, self.reference = X, reference_agop
        self.every, self.centered, self.sqrt = every, centered, sqrt
        self.chunk_size, self.block, self.top_k = chunk_size, block, top_k
        self.rows: list[dict[str, Any]] = []
        self.final_agop: Tensor | None = None
        self.final_eigenvalues: Tensor | None = None
        self.final_step: int | None = None
        self.summary: dict[str, Any] = {}
        self._ref_sqrt: Matrix | None = None

    def _reference_for_cosine(self) -> Matrix:
        """The reference as compared: its square root with ``sqrt`` (computed once)."""
        if not self.sqrt:
            return self.reference
        if self._ref_sqrt is None:
            self._ref_sqrt = agop_lib.matrix_sqrt(self.reference)
        return self._ref_sqrt

    def _align(self, G: Matrix) -> float:
        if self.sqrt:
            G = agop_lib.matrix_sqrt(G)
        return agop_lib.alignment(G, self._reference_for_cosine(), centered=self.centered)

    def measure(self, model: nn.Module | Any, *, check: bool = False) -> float:
        """``ρ(G(model, X), reference)`` with this monitor's options (the network's AGOP in
        whichever form is cheaper, see :func:`catapults.agop.agop_for_alignment`)."""
        G = agop_lib.agop_for_alignment(model, self.X, self.reference, sqrt=self.sqrt,
                                        chunk_size=self.chunk_size, check=check)
        return self._align(G)

    def on_train_begin(self, state: StepContext) -> None:
        dtype = state.dtype
        self.X = self.X.to(state.device, dtype)
        self.reference = self.reference.to(state.device, dtype)
        self._ref_sqrt = None
        try:
            agop_lib.check_per_sample(state.model, self.X)
        except agop_lib.AGOPError as err:
            raise agop_lib.AGOPError(f"monitor.agop: {err}") from None

    def state_dict(self) -> dict[str, Any]:
        """The alignments measured so far (the final AGOP is computed at the end)."""
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])

    def on_step_begin(self, state: StepContext, X: Tensor, y: Tensor,
                      record: dict[str, Any]) -> None:
        if state.step % self.every == 0:
            rho = self.measure(state.model)
            record[metrics.AGOP_ALIGNMENT] = rho
            self.rows.append({"step": state.step, metrics.AGOP_ALIGNMENT: rho})

    def on_train_end(self, state: StepContext, summary: dict[str, Any]) -> None:
        model = state.model
        d = int(self.X[0].numel())
        grads = agop_lib.input_gradients(model, self.X, chunk_size=self.chunk_size, check=False)
        G = agop_lib.FactoredAGOP.from_gradients(grads, self.X.shape[0])
        rho = self._align(G)
        finite = bool(torch.isfinite(grads).all())
        self.final_step = int(state.step)
        if finite:
            self.final_agop = G.matrix().detach().cpu()
            self.final_eigenvalues = G.eigenvalues(self.top_k).detach().cpu()
        if not self.rows or self.rows[-1]["step"] != state.step:
            self.rows.append({"step": int(state.step), metrics.AGOP_ALIGNMENT: rho, "final": True})
        values = [r[metrics.AGOP_ALIGNMENT] for r in self.rows]
        self.summary = {
            "initial_alignment": values[0],
            "final_alignment": rho,
            "max_alignment": max((v for v in values if math.isfinite(v)), default=float("nan")),
            "final_step": int(state.step),
            "measurements": len(self.rows),
            "n_samples": int(self.X.shape[0]),
            "d": d,
            "centered": self.centered,
            "sqrt": self.sqrt,
            "reference": "factored" if isinstance(self.reference, FactoredAGOP) else "dense",
            "final_trace": G.trace() if finite else float("nan"),
            "final_top_eigenvalues": (self.final_eigenvalues.tolist()
                                      if self.final_eigenvalues is not None else None),
        }
        summary["monitors"]["agop"] = self.summary

    def write_artifacts(self, run_dir: str | Path, *, figures: bool = True) -> None:
        from catapults.storage.atomic import save_torch_atomic

        run_dir = Path(run_dir)
        if self.final_agop is not None:
            save_torch_atomic(run_dir / "agop.pt", {
                "agop": self.final_agop, "eigenvalues": self.final_eigenvalues,
                "step": self.final_step, "alignment": self.summary.get("final_alignment"),
                "n_samples": int(self.X.shape[0]), "centered": self.centered, "sqrt": self.sqrt})
        if not figures:
            return
        from catapults.plotting import plot_agop, plot_alignment

        if self.final_agop is not None:
            plot_agop(self.final_agop, run_dir / "figures" / "agop.png",
                      reference=self.reference, block=self.block, top_k=self.top_k,
                      eigenvalues=self.final_eigenvalues)
        if self.rows:
            plot_alignment(self.rows, run_dir / "figures" / "agop_alignment.png",
                           centered=self.centered, sqrt=self.sqrt)
