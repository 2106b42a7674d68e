"""Sweeps: many runs of one base config over a grid of fields and seeds, resumable, aggregated.

The package, one idea a module:

- :mod:`~catapults.sweeps.spec`      the sweep file: trials, their ids and validated configs
- :mod:`~catapults.sweeps.trial`     running one trial (worker process, Ray task, this process)
- :mod:`~catapults.sweeps.index`     the index of a sweep directory and the trials' statuses
- :mod:`~catapults.sweeps.lock`      the OS lock that keeps two sweeps out of one directory
- :mod:`~catapults.sweeps.launchers` :func:`run_sweep`: local pool, inline and Ray backends
- :mod:`~catapults.sweeps.report`    the aggregate table and figures (``catapults sweep-report``)

The command line (``catapults sweep``, ``catapults sweep-report``) is
:mod:`catapults.cli.sweep`. Layout of a sweep directory::

    DIR/sweep.yaml                 the resolved sweep (base inline), written at the start
    DIR/trials/<trial_id>/         one ordinary run directory per trial (see catapults.runs)
    DIR/index.jsonl, DIR/index.csv one row per trial: id, parameters, seed, status, attempts,
                                   metrics; rewritten atomically after every trial
    DIR/report/report.csv          the aggregate table (``catapults sweep-report DIR``)
    DIR/report/*.png               each metric against each swept parameter (mean +- std)
"""

from __future__ import annotations

from catapults.sweeps.index import (
    FINISHED,
    count_statuses,
    read_index,
    read_trial_status,
)
from catapults.sweeps.launchers import SweepResult, cpu_count, run_sweep
from catapults.sweeps.lock import SweepLock
from catapults.sweeps.report import LOG_X_FIELDS, Report, format_report, sweep_report, use_log_x
from catapults.sweeps.spec import (
    DEFAULT_METRICS,
    SWEEP_KEYS,
    Sweep,
    Trial,
    check_trials,
    expand,
    format_value,
    get_dotted,
    load_sweep,
    trial_id,
)
from catapults.sweeps.trial import execute_trial

_Lock = SweepLock  # the name the lock had before the split (tests import it)

__all__ = [
    "DEFAULT_METRICS", "FINISHED", "LOG_X_FIELDS", "SWEEP_KEYS", "Report", "Sweep",
    "SweepLock", "SweepResult", "Trial", "check_trials", "count_statuses", "cpu_count",
    "execute_trial", "expand", "format_report", "format_value", "get_dotted", "load_sweep",
    "read_index", "read_trial_status", "run_sweep", "sweep_report", "trial_id", "use_log_x",
]
