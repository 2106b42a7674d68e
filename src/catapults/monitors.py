"""Monitors: callbacks that watch training (NTK spectrum, AGOP alignment, catapult events).

``build_monitors(config, data)`` turns the ``monitor`` config section into callbacks for the
trainer. Each monitor also works on its own in any PyTorch loop (see its docstring).
"""

from __future__ import annotations

from catapults.config import RunConfig
from catapults.data import Dataset
from catapults.training import Callback


def build_monitors(config: RunConfig, data: Dataset) -> list[Callback]:
    """The monitors enabled in ``config.monitor``, validated against ``data``."""
    monitors: list[Callback] = []
    return monitors
