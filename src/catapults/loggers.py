"""Loggers: where metrics rows go. A row is a dict with ``step`` and any metrics
(:mod:`catapults.metrics`); every logger takes rows with :meth:`Logger.log` and is closed once.

- :class:`JSONLinesLogger`  ``metrics.jsonl``: one strict-JSON object per row, flushed each time
  (the default of every run)
- :class:`TensorBoardLogger` TensorBoard event files: one scalar per numeric metric, the list
  metrics (``ntk/lambda``) as ``ntk/lambda_1..k``; tags are the metric names (``loss``, ``lr``,
  ``train_loss``, ``test_loss``, ``ntk/eta_crit``, ...). Needs the ``tensorboard`` package
  (``pip install tensorboard``), imported only when such a logger is made.
- :class:`MemoryLogger`     keeps the rows in a list (tests, notebooks)

Write your own by subclassing :class:`Logger` (``log`` and, if needed, ``close``); the trainer,
:func:`catapults.watch` and the Lightning callback accept a list of loggers.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from catapults import metrics
from catapults.errors import ConfigError
from catapults.storage.rundir import MetricsFile

__all__ = ["JSONLinesLogger", "Logger", "MemoryLogger", "TensorBoardLogger", "scalars"]


class Logger:
    """Base class: receives metrics rows. ``log`` must not keep references to mutable rows."""

    def log(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def __call__(self, row: dict[str, Any]) -> None:
        self.log(row)

    def close(self) -> None:  # noqa: B027 - optional
        """Flush and release files; called once at the end."""


class JSONLinesLogger(Logger):
    """Append rows to ``path`` (``metrics.jsonl``) as strict JSON lines (non-finite -> null)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = MetricsFile(self.path)

    def log(self, row: dict[str, Any]) -> None:
        self._file(row)

    def close(self) -> None:
        self._file.close()


class MemoryLogger(Logger):
    """Keep a copy of every row in :attr:`rows`."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of ``row`` as ``{tag: float}``: numbers (not bools) as they are, list
    metrics element by element as ``KEY_1..KEY_k``; ``step`` and ``epoch`` and non-numeric
    values are left out. Non-finite values are kept (TensorBoard shows them)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in (metrics.STEP, metrics.EPOCH):
            continue
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, numbers.Real) and not isinstance(v, bool):
                    out[f"{key}_{i + 1}"] = float(v)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class TensorBoardLogger(Logger):
    """Write rows as TensorBoard scalars under ``log_dir`` (global step = the row's ``step``).

    ``purge_step``: when resuming, events at or after this step in earlier files are dropped by
    TensorBoard's reader, so a resumed run shows each step once."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None,
                 flush_secs: int = 10) -> None:
        self.check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step,
                                     flush_secs=flush_secs)

    @staticmethod
    def check_available() -> None:
        """Raise :class:`ConfigError` if the tensorboard package cannot be imported."""
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("output.tensorboard: the tensorboard package is not installed "
                              "(pip install tensorboard)")

    def log(self, row: dict[str, Any]) -> None:
        step = int(row.get(metrics.STEP, 0))
        for tag, value in scalars(row).items():
            self._writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


def log_all(loggers: Iterable[Logger], row: dict[str, Any]) -> None:
    """Send ``row`` to every logger."""
    for lg in loggers:
        lg.log(row)
