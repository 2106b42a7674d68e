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

__version__ = "0.1.0"

from catapults.config import ConfigError, RunConfig, load_config  # noqa: E402
from catapults.runs import RunResult, run  # noqa: E402

__all__ = ["ConfigError", "RunConfig", "RunResult", "load_config", "run", "__version__"]
