"""Monitors: callbacks that watch training without the trainer knowing them.

- :mod:`catapults.monitors.ntk`    NTK spectrum, critical learning rates, top-eigenspace split
- :mod:`catapults.monitors.agop`   AGOP alignment with the true / reference AGOP
- :mod:`catapults.monitors.events` catapult detection and early warning

``build_monitors(config, data)`` turns the ``monitor`` config section into callbacks. Each
monitor also works in a hand-written PyTorch loop (see the class docstrings).
"""

from __future__ import annotations

from torch import Tensor

from catapults.config import NTKMonitorConfig, RunConfig
from catapults.data import Dataset
from catapults.monitors.agop import AGOPMonitor
from catapults.monitors.events import EventsMonitor
from catapults.monitors.ntk import NTKMonitor
from catapults.training import Callback

__all__ = ["AGOPMonitor", "EventsMonitor", "NTKMonitor", "build_monitors"]


def _probe(cfg: NTKMonitorConfig, data: Dataset, full_batch: bool) -> tuple[Tensor, Tensor]:
    n = data.X_train.shape[0]
    size = cfg.probe_size or (n if full_batch else min(n, 512))
    size = min(size, n)
    return data.X_train[:size], data.y_train[:size]


def build_monitors(config: RunConfig, data: Dataset) -> list[Callback]:
    """The monitors enabled in ``config.monitor``, validated against ``data``."""
    monitors: list[Callback] = []
    m = config.monitor
    full_batch = config.train.optimizer == "gd" or config.train.batch_size is None
    if m.ntk.enabled:
        X, y = _probe(m.ntk, data, full_batch)
        monitors.append(NTKMonitor(X, y, k=m.ntk.k, every=m.ntk.every, s=m.ntk.s,
                                   batch=m.ntk.batch, method=m.ntk.method))
    if m.agop.enabled:
        monitors.append(AGOPMonitor.from_config(config, data))
    if m.events.enabled:
        monitors.append(EventsMonitor(ratio=m.events.ratio, window=m.events.window,
                                      return_ratio=m.events.return_ratio,
                                      warning_window=m.events.warning_window,
                                      series=m.events.series if m.events.series != "auto"
                                      else ("loss" if full_batch else "train_loss")))
    return monitors
