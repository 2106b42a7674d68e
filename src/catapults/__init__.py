"""catapults: loss spikes (catapults) in neural-network training.

Conventions (mean-MSE loss, the full NTK ``K = J Jᵀ``, critical learning rate ``n·c/λ_max(K)``,
NTK parameterisation, AGOP, alignment) are in docs/conventions.md. The package is layered; each
layer imports only from the ones below it (README "Architecture", checked by import-linter):

- :mod:`catapults.errors`, :mod:`catapults.storage`, :mod:`catapults.workers`   errors, files
- :mod:`catapults.linalg`      symmetric Gram products, eigensolvers
- :mod:`catapults.curvature`   NTK, spectrum, critical rates, loss split, AGOP
  (public faces: :mod:`catapults.ntk`, :mod:`catapults.agop`)
- :mod:`catapults.models`, :mod:`catapults.data`, :mod:`catapults.detect`
- :mod:`catapults.training`    the trainer and its callback interface
- :mod:`catapults.plotting`, :mod:`catapults.loggers`, :mod:`catapults.monitors`
  (with :func:`catapults.watch` for any training loop), :mod:`catapults.integrations`
- :mod:`catapults.config`      the run configuration (no torch)
- :mod:`catapults.runs`        the composition root: config -> run directory
- :mod:`catapults.sweeps`, :mod:`catapults.experiments`, :mod:`catapults.cli`
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = [
    "AGOPError", "CatapultsError", "CheckpointError", "ConfigError", "DataError", "KernelError",
    "LockError", "MonitorError", "RunConfig", "RunDirError", "RunExistsError", "RunResult",
    "TargetError", "WriteError", "load_config", "resume", "run", "watch", "__version__",
]

# The names above are imported on first use (PEP 562), so that importing a light module such as
# catapults.workers (in a sweep's worker process, before it sets its thread counts) does not
# import torch.
_LAZY = {"RunConfig": "config", "load_config": "config", "RunResult": "runs", "run": "runs",
         "resume": "runs", "watch": "monitors.watch"}
_ERRORS = {"AGOPError", "CatapultsError", "CheckpointError", "ConfigError", "DataError",
           "KernelError", "LockError", "MonitorError", "RunDirError", "RunExistsError",
           "TargetError", "WriteError"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _ERRORS:
        return getattr(importlib.import_module("catapults.errors"), name)
    if name in _LAZY:
        return getattr(importlib.import_module(f"catapults.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'catapults' has no attribute {name!r}")
