"""Learning-rate schedules: ``step -> learning rate`` functions built from a schedule spec."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def make_schedule(
    cfg: Any, base_lr: float, *, total_steps: int, steps_per_epoch: int = 1
) -> Callable[[int], float]:
    """A function ``step -> learning rate``.

    'step': ``base_lr`` until ``milestones[0]``, then ``values[i]`` from ``milestones[i]`` on.
    'warmup': linear ramp ``base_lr * (t+1)/W`` for ``t < W``, then ``base_lr``.
    'cosine': the warm-up, then ``min_lr + (base_lr-min_lr)(1+cos(pi u))/2`` with u going 0 -> 1
    over the remaining steps. Milestones and warm-up are in steps or epochs (``cfg.unit``).
    """
    mult = steps_per_epoch if cfg.unit == "epoch" else 1
    warm = cfg.warmup * mult
    milestones = [m * mult for m in cfg.milestones]
    values = list(cfg.values)

    def lr(step: int) -> float:
        if cfg.kind == "step":
            value = base_lr
            for m, v in zip(milestones, values):
                if step >= m:
                    value = v
        elif cfg.kind == "cosine":
            span = max(total_steps - warm - 1, 1)
            u = min(max(step - warm, 0) / span, 1.0)
            value = cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * u))
        else:
            value = base_lr
        if warm > 0 and step < warm:
            value = value * (step + 1) / warm
        return value

    return lr
