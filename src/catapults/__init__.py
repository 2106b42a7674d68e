"""catapults: loss spikes (catapults) in neural-network training.

Conventions (mean-MSE loss, NTK parameterisation, critical learning rate, AGOP, alignment) follow
SPEC.md section 1; see the README. Modules, one idea each:

- :mod:`catapults.config`   run configuration (validated YAML)
- :mod:`catapults.data`     data sets and tasks;  :mod:`catapults.targets` synthetic targets
- :mod:`catapults.models`   MLPs in NTK / standard parameterisation
- :mod:`catapults.training` the training engine and callback interface
- :mod:`catapults.runs`     run directories on disk
- :mod:`catapults.monitors` monitors plugged into training
- :mod:`catapults.ntk`, :mod:`catapults.agop`, :mod:`catapults.detect` the quantities monitored
- :mod:`catapults.sweeps`   sweeps;  :mod:`catapults.workers` their local worker pool
- :mod:`catapults.experiments` the paper's experiments (``catapults reproduce``)
- :mod:`catapults.reporting` figures
- :mod:`catapults.cli`      the command line
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ConfigError", "RunConfig", "RunResult", "load_config", "run", "__version__"]

# The names above are imported on first use (PEP 562), so that importing a light module such as
# catapults.workers (in a sweep's worker process, before it sets its thread counts) does not
# import torch.
_LAZY = {"ConfigError": "config", "RunConfig": "config", "load_config": "config",
         "RunResult": "runs", "run": "runs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"catapults.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'catapults' has no attribute {name!r}")
