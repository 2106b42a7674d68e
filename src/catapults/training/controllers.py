"""Learning-rate controllers that use the critical rate: catapults on demand, and a guard that
prevents them. Both work in any training loop, like a ``torch.optim.lr_scheduler``: call
``step(loss)`` after ``optimizer.step()`` and they set the learning rate of the next update in
the optimizer's parameter groups.

- :class:`CatapultOnDemand` places catapults deliberately (the seed's check 3): while the loss is
  calm it re-measures ``η_crit = n·c / λ_max(K)`` on a probe and raises the learning rate to
  ``alpha · η_crit`` (``alpha`` in the catapult window, about 1.1-1.9 for the nets of
  docs/conventions.md); when the spike is over (or never came) it re-measures ``η_crit`` and keeps
  the learning rate only if it is now stable, else brings it to ``restore · η_crit``; while calm
  it keeps it there (``λ_max`` grows back after a catapult), so catapults come only when asked.
- :class:`CriticalGuard` keeps the learning rate at or below ``margin · η_crit``, re-measured
  every ``every`` steps: it clips whatever the schedule asks for, so no update is taken above the
  critical rate of the probe (gradient descent then cannot catapult on it, up to the change of
  ``η_crit`` between two measurements).

Both measure ``η_crit`` with :func:`catapults.curvature.spectrum.critical_lr` on the probe
(the full kernel; the model's outputs must not mix samples), and keep their state in
``state_dict()`` (plain numbers) so a checkpointed run resumes them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from catapults.curvature.spectrum import critical_lr
from catapults.errors import ConfigError

__all__ = ["CatapultOnDemand", "CriticalGuard"]


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _measure(model: nn.Module, X: Tensor) -> float:
    was = model.training
    model.eval()
    try:
        return float(critical_lr(model, X))
    finally:
        model.train(was)


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class CatapultOnDemand:
    """Raise the learning rate above the critical rate when the loss is calm; restore a stable
    one when the catapult is over.

    Args:
        optimizer: its parameter groups get the learning rate of every update.
        model, probe: ``η_crit`` is measured on ``model`` at the inputs ``probe`` (``(n, ...)``).
        alpha: the raise, a multiple of the ``η_crit`` measured when it is made (> 1).
        restore: after a spike, the learning rate becomes ``min(lr, restore · η_crit)`` with
            ``η_crit`` re-measured (< 1).
        base: the first learning rate, a multiple of the initial ``η_crit`` (< 1: no catapult).
        gap: at least this many updates between a spike's end and the next raise.
        calm_window: the loss is calm when it is not above ``calm_rise`` times its minimum over
            the last ``calm_window`` steps.
        ratio: a spike has started when the loss exceeds ``ratio`` times the loss at the raise;
            it is over when the loss is back at or below the geometric midpoint of the loss at
            the raise and the spike's peak (the detector's rule; a catapult may end at a higher
            loss than it started from).
        wait: a raise that has not started a spike after ``wait`` updates is given up, and a
            spike not over after ``wait`` updates is settled (restored) too.
        max_catapults: stop raising after this many spikes (None: no limit).
        guard_every: while calm, re-measure ``η_crit`` every this many updates and keep the
            learning rate at or below ``restore · η_crit``: ``λ_max`` grows back after a
            catapult (progressive sharpening) and would otherwise cross the critical level on
            its own and catapult unasked (None: no guard).

    ``step(loss)`` takes the loss of the update just made (any number or 0-d tensor) and sets
    the next learning rate; ``raises`` and ``spikes`` list the steps where they happened.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, probe: Tensor, *,
                 alpha: float = 1.3, restore: float = 0.9, base: float = 0.9, gap: int = 50,
                 calm_window: int = 10, calm_rise: float = 1.05, ratio: float = 3.0,
                 wait: int = 100, max_catapults: int | None = None,
                 guard_every: int | None = 10) -> None:
        self.optimizer, self.model, self.probe = optimizer, model, probe
        self.alpha = _positive("alpha", alpha)
        self.restore = _positive("restore", restore)
        if self.alpha <= 1 or self.restore >= 1 or _positive("base", base) >= 1:
            raise ConfigError("alpha must be > 1 (a raise above the critical rate); restore and "
                              f"base < 1 (below it); got {alpha}, {restore}, {base}")
        self.gap, self.calm_window, self.wait = int(gap), int(calm_window), int(wait)
        self.calm_rise, self.ratio = _positive("calm_rise", calm_rise), _positive("ratio", ratio)
        self.max_catapults = max_catapults
        if guard_every is not None and int(guard_every) < 1:
            raise ConfigError(f"guard_every must be None or an integer >= 1, got {guard_every!r}")
        self.guard_every = guard_every
        self.t = 0                       # updates seen
        self.phase = "calm"              # calm | raised | spike
        self.loss_at_raise = math.nan
        self.peak = math.nan
        self.phase_since = 0
        self.recent: list[float] = []
        self.raises: list[int] = []      # the update index of each raise
        self.spikes: list[int] = []      # the update index where each spike started
        self.eta_crit = _measure(model, probe)
        self.lr = float(base) * self.eta_crit
        _set_lr(optimizer, self.lr)

    def step(self, loss: float | Tensor) -> float:
        """Take the loss of the update just made; returns (and sets) the next learning rate."""
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        self.t += 1
        self.recent = (self.recent + [value])[-self.calm_window:]
        if not math.isfinite(value):
            return self.lr  # a diverged run: the loop decides what to do
        since = self.t - self.phase_since
        if self.phase == "spike":
            self.peak = max(self.peak, value)
        if self.phase == "raised" and value > self.ratio * self.loss_at_raise:
            self.phase, self.phase_since, self.peak = "spike", self.t, value
            self.spikes.append(self.t)
        elif (self.phase == "spike" and value <= math.sqrt(self.loss_at_raise * self.peak)) or (
                self.phase in ("raised", "spike") and since >= self.wait):
            self._settle()
        elif self.phase == "calm" and self._ready(value, since):
            self.eta_crit = _measure(self.model, self.probe)
            self.lr = self.alpha * self.eta_crit
            self.phase, self.phase_since, self.loss_at_raise = "raised", self.t, value
            self.raises.append(self.t)
        elif self.phase == "calm" and self.guard_every and since % self.guard_every == 0:
            self.eta_crit = _measure(self.model, self.probe)
            self.lr = min(self.lr, self.restore * self.eta_crit)
        _set_lr(self.optimizer, self.lr)
        return self.lr

    def _ready(self, value: float, since: int) -> bool:
        full = len(self.recent) >= self.calm_window
        budget = self.max_catapults is None or len(self.spikes) < self.max_catapults
        return (full and budget and since >= self.gap
                and value <= self.calm_rise * min(self.recent))

    def _settle(self) -> None:
        self.eta_crit = _measure(self.model, self.probe)
        self.lr = min(self.lr, self.restore * self.eta_crit)
        self.phase, self.phase_since, self.recent = "calm", self.t, []

    def state_dict(self) -> dict[str, Any]:
        keys = ("t", "phase", "loss_at_raise", "peak", "phase_since", "recent", "raises",
                "spikes", "eta_crit", "lr")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, list(v) if isinstance(v, list) else v)
        _set_lr(self.optimizer, self.lr)


class CriticalGuard:
    """Clip the learning rate to ``margin · η_crit`` of the probe, re-measured every ``every``
    updates.

    ``step(lr)`` takes the learning rate a schedule asks for at the next update and returns (and
    sets in the optimizer) ``min(lr, margin · η_crit)``; ``clipped`` counts the updates it
    lowered.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, probe: Tensor, *,
                 margin: float = 0.9, every: int = 10) -> None:
        self.optimizer, self.model, self.probe = optimizer, model, probe
        self.margin = _positive("margin", margin)
        if self.margin >= 1:
            raise ConfigError(f"margin must be < 1 (below the critical rate), got {margin}")
        if int(every) < 1:
            raise ConfigError(f"every must be an integer >= 1, got {every!r}")
        self.every, self.t, self.clipped = int(every), 0, 0
        self.eta_crit = _measure(model, probe)

    def step(self, lr: float) -> float:
        if self.t % self.every == 0 and self.t > 0:
            self.eta_crit = _measure(self.model, self.probe)
        self.t += 1
        cap = self.margin * self.eta_crit
        if lr > cap:
            self.clipped += 1
        out = min(float(lr), cap)
        _set_lr(self.optimizer, out)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "clipped": self.clipped, "eta_crit": self.eta_crit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.clipped, self.eta_crit = state["t"], state["clipped"], state["eta_crit"]
