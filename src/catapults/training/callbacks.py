"""The callback interface of the trainer: what a monitor sees, and when.

Callbacks (monitors) see training through four hooks and never need the trainer to know them::

    class Callback:
        def on_train_begin(self, state): ...
        def on_step_begin(self, state, X, y, record): ...   # model at θ_t; add keys to record
        def on_step_end(self, state, record): ...           # model at θ_{t+1}
        def on_train_end(self, state, summary): ...         # add final figures to summary
        def state_dict(self): ...                           # what a resumed run needs
        def load_state_dict(self, state): ...

A callback that keeps measurements between steps returns them from ``state_dict()`` (tensors
and plain data only: checkpoints load with ``weights_only=True``); a resumed run calls
``load_state_dict`` before training continues (``on_train_begin`` is called again then).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from catapults.data.tasks import Dataset


@dataclass
class StepContext:
    """What a monitor sees of training: the model and optimizer, where tensors live, and the
    current update (``step``, ``epoch`` and the learning rate ``lr`` of update ``step``; the
    model is at θ_step in ``on_step_begin``). ``history`` holds the metrics rows so far.
    Monitors rely on these fields only, so they work in the trainer, in :func:`catapults.watch`
    and in the Lightning callback alike."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    device: torch.device
    dtype: torch.dtype
    full_batch: bool
    step: int = 0
    epoch: int = 0
    lr: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainState(StepContext):
    """The trainer's context: a :class:`StepContext` plus the trainer's data and settings."""

    data: Dataset | None = None
    config: Any = None
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    total_steps: int = 0
    batch_size: int = 0
    batch_index: Tensor | None = None


class Callback:
    """Base class of monitors; override any hook. Hooks must not change the parameters."""

    name = "callback"
    #: Whether the trainer's checkpoints hold this callback's state. A callback that only
    #: observes or controls (a stop flag, a progress hook) sets it false, so a run checkpointed
    #: with it resumes without it and the other way round.
    checkpointed = True

    def on_train_begin(self, state: StepContext) -> None:  # noqa: B027
        pass

    def on_step_begin(self, state: StepContext, X: Tensor, y: Tensor,
                      record: dict[str, Any]) -> None:  # noqa: B027
        pass

    def on_step_end(self, state: StepContext, record: dict[str, Any]) -> None:  # noqa: B027
        pass

    def on_train_end(self, state: StepContext, summary: dict[str, Any]) -> None:  # noqa: B027
        pass

    def write_artifacts(self, run_dir, *, figures: bool = True) -> None:  # noqa: B027
        """Write the monitor's files (and figures) into the run directory."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback has gathered so far that a resumed run needs (for a checkpoint:
        tensors, dicts, lists, str, int, float, bool, None). Default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Take back what :meth:`state_dict` returned (before training resumes)."""
