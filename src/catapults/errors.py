"""The exceptions of catapults: one family, so that a library caller can tell them apart.

Every error the toolkit raises on purpose derives from :class:`CatapultsError`; the command line
prints its message as one line and exits with code 2. Each class also derives from the builtin
exception a caller would expect (``ValueError``, ``RuntimeError``), so ``except ValueError``
written against earlier versions keeps working.

=====================  ======================================================================
class                  raised for
=====================  ======================================================================
``ConfigError``        an invalid config field, override, sweep file or argument
``RunExistsError``     the run directory exists and ``overwrite`` was not asked for
``RunDirError``        a directory that is not a run, or a run in a state that forbids the
                       operation (resume of a completed run, a config that no longer matches)
``CheckpointError``    a checkpoint that is missing, corrupt or of another version
``LockError``          a sweep directory locked by another sweep
``DataError``          a data file that is missing, truncated or corrupt (the message names it)
``MissingDataError``   a ``DataError`` for a file that does not exist (``.path``)
``TargetError``        a synthetic target expression that is invalid or not finite
``KernelError``        an NTK (or other curvature quantity) that cannot be computed for this
                       model or input; ``NTKError`` is the same class
``AGOPError``          an AGOP that cannot be computed for this predictor or input
``MonitorError``       a monitor used wrongly (``watch`` with a probe that does not fit)
``WriteError``         a file that cannot be written (disk full, read-only file system, ...);
                       also an ``OSError`` with the ``errno`` and the file's name
=====================  ======================================================================
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AGOPError", "CatapultsError", "CheckpointError", "ConfigError", "DataError", "KernelError",
    "LockError", "MissingDataError", "MonitorError", "NTKError", "RunDirError", "RunExistsError",
    "TargetError", "WriteError",
]


class CatapultsError(Exception):
    """Base class of every error catapults raises on purpose (the message says what is wrong)."""


class ConfigError(CatapultsError, ValueError):
    """A configuration (file, override, field value, argument) is invalid. Names the field."""


class RunExistsError(ConfigError):
    """The run directory exists and overwrite was not asked for."""


class RunDirError(ConfigError):
    """A directory is not a run, or the run's state forbids the operation asked for."""


class CheckpointError(CatapultsError, ValueError):
    """A checkpoint is missing, corrupt, or does not belong to this run or version."""


class LockError(CatapultsError, RuntimeError):
    """A directory is locked by another process (a sweep running there)."""


class DataError(CatapultsError, ValueError):
    """A data set cannot be loaded (missing, truncated or corrupt file). The message names it."""


class MissingDataError(DataError):
    """A DataError for a file or directory that does not exist; ``path`` is the one expected."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class TargetError(CatapultsError, ValueError):
    """A synthetic target expression is invalid, unsafe, too large or not finite."""


class KernelError(CatapultsError, ValueError):
    """The kernel (or another curvature quantity) cannot be computed for this model or input."""


NTKError = KernelError


class AGOPError(CatapultsError, ValueError):
    """The AGOP cannot be computed for this predictor or input (the message says why)."""


class MonitorError(CatapultsError, ValueError):
    """A monitor is used in a way it cannot measure (the message says why)."""


class WriteError(CatapultsError, OSError):
    """A file cannot be written (``ENOSPC``, ``EROFS``, ``EACCES``, ...): ``filename`` is the file
    meant (its final name, not a temporary one), ``errno`` the system's error number."""

    def __init__(self, path: str | Path, err: OSError) -> None:
        super().__init__(err.errno, err.strerror or str(err), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"{self.path}: cannot write it: {self.strerror}"
