"""Monitors: callbacks that watch training without the trainer knowing them.

- :mod:`catapults.monitors.ntk`    NTK spectrum, critical learning rates, top-eigenspace split
- :mod:`catapults.monitors.agop`   AGOP alignment with the true / reference AGOP
- :mod:`catapults.monitors.events` catapult detection and early warning

Each monitor also works in a hand-written PyTorch loop (see the class docstrings). The run's
composition root (:func:`catapults.runs.build_monitors`) builds them from a config.
"""

from catapults.monitors.agop import AGOPMonitor
from catapults.monitors.events import EventsMonitor
from catapults.monitors.ntk import NTKMonitor
from catapults.monitors.sharpness import SharpnessMonitor

__all__ = ["AGOPMonitor", "EventsMonitor", "NTKMonitor", "SharpnessMonitor"]
