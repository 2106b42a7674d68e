"""Run directories: their layout, the marker that makes a directory a run, creating and replacing
them safely, and reading their files.

Layout::

    RUN/.catapults-run   the marker that makes RUN a run directory (only those are replaced)
    RUN/config.yaml      the fully resolved config (every field)
    RUN/metrics.jsonl    one JSON object per logged step, appended and flushed during training
    RUN/summary.json     status (completed | diverged | failed), final losses, wall time, monitors
    RUN/figures/*.png    figures
    RUN/checkpoint.pt    the final model (and, with checkpointing, everything to resume)

An existing run directory is only replaced with ``overwrite=True``, and only if it holds the
marker; the new run is created beside it and swapped in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from catapults.errors import ConfigError, RunDirError, RunExistsError, WriteError
from catapults.storage.atomic import jsonable, read_json_object, write_json_atomic


def describe_error(err: BaseException) -> str:
    """``'Type: message'`` for a run's summary; an interrupt says what it was."""
    if isinstance(err, KeyboardInterrupt):
        return "KeyboardInterrupt: stopped by Ctrl-C or SIGTERM"
    return f"{type(err).__name__}: {err}"


class MetricsFile:
    """Append-only ``metrics.jsonl``: one strict-JSON object per line, written whole and flushed
    on every write. A write that fails (disk full, ...) is cut back off the file, so no torn
    line is left, and raised as :class:`WriteError` naming the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as err:
            raise WriteError(self.path, err) from None

    def __call__(self, record: dict[str, Any]) -> None:
        line = (json.dumps(jsonable(record), allow_nan=False) + "\n").encode()
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as err:
            try:
                os.ftruncate(self._fd, start)  # frees space: works on a full disk
            except OSError:
                pass
            raise WriteError(self.path, err) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (a torn last line, from a crash, is skipped)."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            continue
    return rows



def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``summary.json``; :class:`ConfigError` naming the file if it is not an object."""
    return read_json_object(Path(run_dir) / "summary.json")


def check_output_path(path: str | Path, what: str, *, directory: bool = True) -> Path:
    """Raise :class:`ConfigError` (naming ``what``) unless ``path`` can be written as an output
    directory (or, with ``directory=False``, a file): not an existing file (directory), and its
    nearest existing ancestor is a directory this process can write in. Writes nothing."""
    p = Path(path)
    if directory and p.exists() and not p.is_dir():
        raise ConfigError(f"{what}: {p} exists and is not a directory")
    if not directory and p.is_dir():
        raise ConfigError(f"{what}: {p} is a directory")
    anc = p if p.is_dir() else p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{what}: cannot create {p}: {anc} is not a directory")
    try:  # as root os.access says yes to everything: try it
        os.rmdir(tempfile.mkdtemp(prefix=".catapults-check-", dir=anc))
    except OSError as err:
        raise ConfigError(f"{what}: cannot create {p}: {anc}: "
                          f"{err.strerror or err}") from None
    return p


RUN_MARKER = ".catapults-run"
"""The file that marks a directory as a run written by this toolkit. ``overwrite`` replaces
only directories that hold it (never a directory that merely contains a ``config.yaml``)."""


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory written by catapults (it holds :data:`RUN_MARKER`)."""
    return (Path(path) / RUN_MARKER).is_file()


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run's lock while training writes ``run_dir``: an exclusive OS lock (``flock``)
    on its :data:`RUN_MARKER`, which the OS drops when the process dies (SIGKILL included).
    Raises :class:`RunDirError` if another process holds it (the run is still going). Changes
    no file. Without ``fcntl`` (Windows) it does nothing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(Path(run_dir) / RUN_MARKER, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunDirError(f"{run_dir}: the run is still going in another process (it holds "
                              f"the lock on {RUN_MARKER}); stop it first") from None
        yield
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:new|old)-(?P<pid>[0-9]+)-[A-Za-z0-9_]+$")


def _stale_staging(out: Path) -> list[Path]:
    """The temporary directories that :func:`create_run_dir` of ``out`` made beside it in a
    process that no longer exists (killed during the swap): ``.NAME.new-PID-*``,
    ``.NAME.old-PID-*``."""
    stale = []
    try:
        entries = list(out.parent.iterdir()) if out.parent.is_dir() else []
    except OSError:
        return []
    for p in entries:
        m = _STAGING.match(p.name)
        if m and m["name"] == out.name and p.is_dir() and not _pid_alive(int(m["pid"])):
            stale.append(p)
    return stale


_TEMPORARY = re.compile(r"^\..+\.tmp-([0-9]+)$")


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files (``.NAME.tmp-PID``, from :mod:`catapults.storage.atomic`)
    that processes no longer alive left in ``run_dir`` and its sub-directories when they were
    killed mid-write; the paths removed."""
    removed = []
    for p in Path(run_dir).rglob(".*.tmp-*"):
        m = _TEMPORARY.match(p.name)
        if m and p.is_file() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def never_started(path: str | Path, *, check_lock: bool = True) -> bool:
    """Whether ``path`` is a run directory that was stopped (killed) before it wrote its
    ``config.yaml``: it holds only the marker (and temporary files of dead processes) and no
    process holds its lock. Such a directory is reused by a new run without ``overwrite``."""
    path = Path(path)
    if not is_run_dir(path):
        return False
    for p in path.iterdir():
        if p.name == RUN_MARKER:
            continue
        m = _TEMPORARY.match(p.name)
        if not (m and p.is_file() and not _pid_alive(int(m.group(1)))):
            return False
    try:  # the process that made it may still be about to write (before it takes the lock)
        pid = json.loads((path / RUN_MARKER).read_text()).get("pid")
    except (OSError, ValueError, AttributeError, RecursionError):
        pid = None
    if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
        return False
    if not check_lock:  # the caller holds the lock
        return True
    try:
        with run_lock(path):
            return True
    except RunDirError:
        return False


def prepare_run_dir(out: str | Path, *, overwrite: bool) -> Path:
    """Check that ``out`` may be written, else raise :class:`RunExistsError` (or
    :class:`ConfigError`). Writes nothing.

    ``out`` may be absent or an empty directory. An existing non-empty directory is replaced only
    with ``overwrite=True`` and only if it is a run directory (:func:`is_run_dir`), and never
    when it is the current directory or contains it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output.dir: {out} exists and is not a directory")
    if not out.exists():
        return out
    here, target = Path.cwd().resolve(), out.resolve()
    if target == here or target in here.parents:
        raise ConfigError(f"output.dir: {out} is the current directory or contains it; "
                          "overwrite replaces only run directories")
    empty = not any(out.iterdir())
    if empty or never_started(out):  # a run killed before it wrote anything is reused
        return out
    if not overwrite:
        raise RunExistsError(
            f"output.dir: {out} already exists (pass overwrite=True, or --overwrite on the "
            "command line, to replace it)")
    if not is_run_dir(out):
        raise ConfigError(f"output.dir: {out} is not a run directory (it has no {RUN_MARKER} "
                          "marker written by catapults), so overwrite will not delete it; "
                          "choose another directory")
    return out


def create_run_dir(out: str | Path, *, overwrite: bool) -> Path:
    """Create the run directory ``out`` holding :data:`RUN_MARKER`, after
    :func:`prepare_run_dir`'s checks.

    The new directory is made beside ``out`` (same parent) with its marker and only then swapped
    in, so ``out`` is never a directory without a marker, and an old run is removed only once the
    new one exists: a parent that cannot be written leaves the old run untouched. Raises
    :class:`ConfigError` naming the directory on an OS error.

    The temporary directories (``.NAME.new-PID-*``, ``.NAME.old-PID-*``) that a process killed
    during the swap left beside ``out`` are removed first."""
    out = prepare_run_dir(out, overwrite=overwrite)
    for stale in _stale_staging(out):
        shutil.rmtree(stale, ignore_errors=True)
    old: Path | None = None
    staging: Path | None = None
    pid = os.getpid()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-{pid}-", dir=out.parent))
        write_json_atomic(staging / RUN_MARKER, {"kind": "run", "created": time.time(),
                                                 "pid": pid})
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{pid}-", dir=out.parent))
            os.replace(out, old / "run")
        try:
            os.replace(staging, out)
        except OSError:
            if old is not None:  # put the old run back
                os.replace(old / "run", out)
            raise
        staging = None
    except OSError as err:
        raise ConfigError(f"output.dir: cannot create {out}: "
                          f"{err.strerror or err}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def metrics_before(path: Path, step: int) -> bytes:
    """The lines of ``metrics.jsonl`` whose rows describe steps before ``step``, unchanged (rows
    the killed run wrote after its checkpoint, and a torn last line, are left out)."""
    keep = []
    for line in path.read_bytes().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] < step:
            keep.append(line if line.endswith(b"\n") else line + b"\n")
    return b"".join(keep)


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted key where two nested dicts differ (``'<root>'``), else None; the
    message reads ``a`` as the checkpoint's value and ``b`` as the run directory's."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                return f"{prefix}{key} (present in only one)"
            found = first_difference(a[key], b[key], f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    if a == b and type(a) is type(b):
        return None

    def short(v: Any) -> str:
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."

    where = prefix.removesuffix(".") or "<root>"
    return f"{where} ({short(a)} in the checkpoint, {short(b)} there)"
