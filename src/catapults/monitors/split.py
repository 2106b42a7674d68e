"""The loss split in a *fixed* eigenbasis: the top-``s`` NTK eigenvectors taken once, at step
``at``, and kept.

The NTK monitor splits the probe loss at every measurement in the eigenbasis of the kernel *of
that step* (docs/conventions.md#top-eigenspace-loss-split). During a catapult the kernel itself
changes fast, so the two bases tell different stories: in the basis recomputed every step
``L_rest`` can look flat while, in the basis fixed where the spike began, the same residual has
moved out of the original top eigenspace. A claim about ``L_rest`` names its basis; this monitor
gives the second one. ::

    split = FixedBasisSplit(at=0, s=1)
    trainer = Trainer(model, data, cfg, callbacks=[NTKMonitor(...), split])
    # rows of steps >= at hold ntk/L_top_fixed and ntk/L_rest_fixed (probe = the step's batch
    # in full-batch GD, else the probe given)

With ``s=None`` the size is the NTK monitor's ``ntk/s`` of step ``at`` (so put this monitor after
the NTK monitor), else 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from catapults import metrics
from catapults.curvature.spectrum import split_from_eigvecs, top_eigenpairs
from catapults.training.callbacks import Callback, StepContext

L_TOP_FIXED = metrics.register("ntk/L_top_fixed")
L_REST_FIXED = metrics.register("ntk/L_rest_fixed")


class FixedBasisSplit(Callback):
    """``L_top`` / ``L_rest`` of the probe residual in the top-``s`` eigenvectors of the NTK of
    step ``at`` (see the module docstring). ``probe`` ``(X, y)`` defaults to the step's batch."""

    name = "fixed-basis-split"

    def __init__(self, *, at: int = 0, s: int | None = None,
                 probe: tuple[Tensor, Tensor] | None = None) -> None:
        if at < 0 or (s is not None and s < 1):
            raise ValueError("FixedBasisSplit: at must be >= 0 and s >= 1")
        self.at, self.s, self.probe = at, s, probe
        self.U: Tensor | None = None

    def on_step_begin(self, state: StepContext, X: Tensor, y: Tensor,
                      record: dict[str, Any]) -> None:
        if state.step < self.at:
            return
        PX, Py = self.probe if self.probe is not None else (X, y)
        PX, Py = PX.to(state.device, state.dtype), Py.to(state.device, state.dtype)
        model = state.model
        was = model.training
        model.eval()
        try:
            if self.U is None:
                s = self.s or int(record.get(metrics.NTK_S) or 1)
                _, self.U = top_eigenpairs(model, PX, s)
            with torch.no_grad():
                r = (model(PX) - Py.reshape(PX.shape[0], -1)).reshape(-1)
        finally:
            model.train(was)
        _, top, rest = split_from_eigvecs(r, self.U.to(r.dtype))
        record[L_TOP_FIXED] = top
        record[L_REST_FIXED] = rest

    def state_dict(self) -> dict[str, Any]:
        return {"U": self.U}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.U = state.get("U")
