"""Sweeps: many runs of one base config over a grid of fields and seeds, resumable, aggregated.

A sweep file (YAML)::

    base_config: sgd.yaml          # or an inline `base:` mapping (sections data, model, ...)
    grid:                          # dotted field -> list of values; the cartesian product
      train.batch_size: [4, 16, 64]
      train.lr: [0.5, 1.0]
    trials:                        # optional explicit override dicts; with a grid, each trial is
      - {train.optimizer: sgd}     # combined with each grid point (product)
      - {train.optimizer: momentum, train.momentum: 0.5}
    seeds: [0, 1, 2]               # applied to train.seed (each point x each seed)
    metrics:                       # dotted paths into summary.json, aggregated by the report
      - final_test_loss
      - monitors.events.count
    out: runs/sweeps/my-sweep      # optional default sweep directory (--out overrides)

Layout of a sweep directory::

    DIR/sweep.yaml                 the resolved sweep (base inline), written at the start
    DIR/trials/<trial_id>/         one ordinary run directory per trial (see catapults.runs)
    DIR/index.jsonl, DIR/index.csv one row per trial: id, parameters, seed, status, attempts,
                                   metrics; rewritten atomically after every trial
    DIR/report/report.csv          the aggregate table (``catapults sweep-report DIR``)
    DIR/report/*.png               each metric against each swept parameter (mean +- std)

A trial id is derived from its parameters only (``batch_size=4_seed=0-1a2b3c4d``: a readable part
and a hash of the canonical JSON of the parameters), so it is stable across re-runs and does not
depend on the order of the grid. The status of a trial is read from its ``summary.json``:
re-running a sweep skips trials that ``completed`` or ``diverged`` (a result) and runs again those
that ``failed``, were interrupted, or never finished. Every trial's config is validated before
anything is written; a trial whose stored config differs from the sweep's (the sweep file was
edited) is an error rather than silently reused.

Backends: ``local`` (a pool of ``spawn`` worker processes, :mod:`catapults.workers`,
``--workers`` of them with ``--threads`` torch threads each, workers x threads <= cores by
default; one worker runs the trials in this process) and ``ray`` (each trial a Ray task on the
cluster at ``--address``, or on a local instance; the task runs in a temporary directory on its
node and ships the run directory back as a tar archive, so no shared file system is needed).

Stopping: on Ctrl-C the running trials are interrupted (each records ``status: failed, reason:
interrupted`` in its ``summary.json``), every worker is stopped, the index is written and
``KeyboardInterrupt`` is raised; ``catapults sweep`` also treats SIGTERM this way.
"""

from __future__ import annotations

import collections
import copy
import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from catapults import runs
from catapults.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    read_yaml,
    set_dotted,
)
from catapults.storage.atomic import jsonable, write_text_atomic
from catapults.storage.rundir import check_output_path, describe_error
from catapults.training import Callback

SWEEP_KEYS = ("name", "description", "base", "base_config", "grid", "trials", "seeds", "metrics",
              "out")
DEFAULT_METRICS = ("final_train_loss", "final_test_loss")
FINISHED = ("completed", "diverged")  # a re-run skips these
LOG_X_FIELDS = ("lr", "batch_size", "n_train", "width", "weight_decay")
# fields that do not change what a trial computes (ignored when comparing with a stored config)
_IGNORED_FIELDS = ("output", "train.threads", "train.device")


# ---- small helpers ----------------------------------------------------------------------------
def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _dumps(obj: Any) -> str:
    return json.dumps(jsonable(obj), sort_keys=True, allow_nan=False)


def get_dotted(obj: Any, key: str) -> Any:
    """``obj['a']['b']`` for ``key='a.b'``; None when a part is missing."""
    for part in key.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def format_value(v: Any) -> str:
    """A parameter value as text (None -> 'null', booleans lower case)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    return None


# ---- the sweep file ---------------------------------------------------------------------------
@dataclass
class Trial:
    """One point of a sweep: its parameters (dotted field -> value), seed, id and config."""

    id: str
    params: dict[str, Any]
    seed: int | None
    config: RunConfig

    def label(self) -> str:
        parts = [f"{k}={format_value(v)}" for k, v in self.params.items()]
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return ", ".join(parts) or "(base)"


@dataclass
class Sweep:
    """A validated sweep: the resolved spec and every trial (with a validated config)."""

    source: str
    spec: dict[str, Any]
    trials: list[Trial]
    metrics: list[str]
    swept: list[str]
    out: str | None = None
    base: dict[str, Any] = field(default_factory=dict)

    def default_dir(self) -> Path:
        """The sweep file's ``out``, else ``runs/sweeps/<file stem>``."""
        if self.out is not None:
            return Path(self.out)
        return Path("runs") / "sweeps" / (Path(self.source).stem if self.source != "sweep"
                                          else "sweep")


def trial_id(params: dict[str, Any], seed: int | None) -> str:
    """A stable, file-system-safe id: a readable part and a hash of the canonical parameters."""
    digest = hashlib.sha1(_dumps({"params": params, "seed": seed}).encode()).hexdigest()[:8]
    parts = [f"{k.split('.')[-1]}={format_value(v)}" for k, v in sorted(params.items())]
    if seed is not None:
        parts.append(f"seed={seed}")
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)).strip("-.")[:80] or "trial"
    return f"{slug}-{digest}"


def _check_key(where: str, key: Any) -> str:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key):
        raise ConfigError(f"{where}: {key!r} is not a dotted field such as train.lr")
    if key.split(".")[0] == "output":
        raise ConfigError(f"{where}: {key}: output fields are set by the sweep")
    if key == "train.seed":
        raise ConfigError(f"{where}: train.seed: list the seeds under `seeds:` instead")
    return key


def expand(spec: dict[str, Any], where: str = "sweep") -> list[tuple[dict[str, Any], int | None]]:
    """The (parameters, seed) of every trial: grid product x explicit trials x seeds, in order."""
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: grid: must be a mapping of dotted field -> list of values")
    for key, values in grid.items():
        _check_key(f"{where}: grid", key)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid.{key}: must be a non-empty list of values")
    explicit = spec.get("trials")
    if explicit is None:
        explicit = [{}]
    if not isinstance(explicit, list) or not explicit:
        raise ConfigError(f"{where}: trials: must be a non-empty list of mappings")
    for i, t in enumerate(explicit):
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: trials[{i}]: must be a mapping of dotted field -> value")
        for key in t:
            _check_key(f"{where}: trials[{i}]", key)
            if key in grid:
                raise ConfigError(f"{where}: trials[{i}].{key}: also in the grid")
    seeds = spec.get("seeds")
    if seeds is None:
        seeds = [None]
    elif (not isinstance(seeds, list) or not seeds
          or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{where}: seeds: must be a non-empty list of integers >= 0")
    elif len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds: repeated seed")
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    out = []
    for t in explicit:
        for p in points:
            for s in seeds:
                out.append(({**t, **p}, s))
    return out


def load_sweep(source: str | Path | dict[str, Any], overrides: Iterable[str] = (), *,
               threads: int | None = None) -> Sweep:
    """Read and validate a sweep (a YAML file or a dict): every trial's config is built and
    validated here; a bad field raises :class:`ConfigError` naming the trial and the field.

    ``overrides`` (``KEY=VALUE``) apply to the base config; ``threads`` sets ``train.threads``
    of every trial (unless the sweep varies it)."""
    if isinstance(source, dict):
        spec, where, root = copy.deepcopy(source), "sweep", Path.cwd()
    else:
        path = Path(source)
        where, root = str(path), path.parent
        spec = read_yaml(path, "sweep file")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a sweep must be a mapping with base/base_config, grid, ...")
    for key in spec:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{where}: {key}: unknown key (expected one of "
                              f"{', '.join(SWEEP_KEYS)})")
    if "base" in spec and "base_config" in spec:
        raise ConfigError(f"{where}: give base or base_config, not both")
    if "base_config" in spec:
        bpath = Path(str(spec["base_config"]))
        if not bpath.is_absolute():
            bpath = root / bpath
        try:
            base = read_yaml(bpath) or {}
        except ConfigError as err:
            raise ConfigError(f"{where}: base_config: {err}") from None
    else:
        base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base: must be a mapping of sections (data, model, ...)")
    base = apply_overrides(base, list(overrides))
    try:
        config_from_dict(base)
    except ConfigError as err:
        raise ConfigError(f"{where}: base: {err}") from None
    metrics = spec.get("metrics", list(DEFAULT_METRICS))
    if (not isinstance(metrics, list) or not metrics
            or not all(isinstance(m, str) and m for m in metrics)):
        raise ConfigError(f"{where}: metrics: must be a non-empty list of dotted summary keys "
                          "such as final_test_loss or monitors.events.count")
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"{where}: metrics: repeated metric")

    trials: list[Trial] = []
    seen: dict[str, str] = {}
    for params, seed in expand(spec, where):
        tid = trial_id(params, seed)
        raw = copy.deepcopy(base)
        try:
            for key, value in params.items():
                set_dotted(raw, key, copy.deepcopy(value))
            if seed is not None:
                set_dotted(raw, "train.seed", seed)
            if threads is not None and "train.threads" not in params:
                set_dotted(raw, "train.threads", threads)
            set_dotted(raw, "output.progress", False)
            cfg = config_from_dict(raw)
        except ConfigError as err:
            label = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
            raise ConfigError(f"{where}: trial {tid} ({label or 'base'}"
                              f"{'' if seed is None else f', seed={seed}'}): {err}") from None
        if tid in seen:
            raise ConfigError(f"{where}: trial {tid} appears twice (same parameters and seed)")
        seen[tid] = tid
        trials.append(Trial(tid, params, seed, cfg))
    swept = []
    for t in trials:
        swept += [k for k in t.params if k not in swept]
    resolved = {k: v for k, v in spec.items() if k != "base_config"}
    resolved["base"] = base
    return Sweep(where, resolved, trials, list(metrics), swept, spec.get("out"), base)


def check_trials(sweep: Sweep, trials: Iterable[Trial] | None = None) -> None:
    """Check the trials (default: all) as ``catapults run`` would before writing (target, data
    files, batch size against the data, monitors, device; see
    :func:`catapults.runs.check_config`), each data set built once. Raises
    :class:`ConfigError` naming the trial and the field."""
    from catapults.data import DataError

    cache: dict = {}
    for t in sweep.trials if trials is None else trials:
        try:
            runs.check_config(t.config, cache=cache)
        except (ConfigError, DataError) as err:
            raise ConfigError(f"{sweep.source}: trial {t.id} ({t.label()}): {err}") from None


# ---- running one trial (in a worker process, a Ray task, or this process) --------------------
def _failure_summary(error: str, reason: str = "failed") -> dict[str, Any]:
    return {"status": "failed", "reason": reason, "error": error}


def execute_trial(task: dict[str, Any], *, catch_interrupt: bool = True,
                  callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Run one trial into ``task['dir']`` (replacing what is there) and return
    ``{'id', 'status', 'summary', 'error'}``. Never raises for a failing trial: the failure is
    written to the trial's ``summary.json`` (and ``traceback.txt``) and returned. An interrupt
    (``KeyboardInterrupt``, which is what SIGTERM raises in a worker process) is recorded the
    same way, with reason ``interrupted``, and re-raised if ``catch_interrupt`` is false."""
    out = Path(task["dir"])
    t0 = time.perf_counter()
    try:
        if out.exists():
            shutil.rmtree(out)
        cfg = config_from_dict(task["config"])
        result = runs.run(cfg, out_dir=out, overwrite=True, progress=False,
                          callbacks=callbacks or None)
        return {"id": task["id"], "status": result.status, "summary": result.summary,
                "error": None}
    except (Exception, KeyboardInterrupt) as err:
        error = describe_error(err)
        summary_path = out / "summary.json"
        summary = None
        if summary_path.is_file():  # run() wrote it (failed during training)
            try:
                summary = json.loads(summary_path.read_text())
            except (OSError, json.JSONDecodeError):
                summary = None
        if summary is None:
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            summary = _failure_summary(error, reason)
            summary["wall_time_s"] = time.perf_counter() - t0
            write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
        write_text_atomic(out / "traceback.txt", traceback.format_exc())
        if isinstance(err, KeyboardInterrupt) and not catch_interrupt:
            raise
        return {"id": task["id"], "status": "failed", "summary": summary, "error": error}


def _pack(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return buf.getvalue()


def _unpack(data: bytes, target: Path) -> None:
    """Extract a trial archive next to ``target`` and swap it in (never half a directory)."""
    staging = target.with_name(f".incoming-{target.name}-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # pragma: no cover - old Python
                tar.extractall(staging)
        cfg_path = staging / "config.yaml"
        if cfg_path.is_file():  # the run was written on the Ray node under a temporary name
            resolved = yaml.safe_load(cfg_path.read_text()) or {}
            resolved.setdefault("output", {})["dir"] = str(target)
            write_text_atomic(cfg_path, yaml.safe_dump(resolved, sort_keys=False))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _ray_trial(task: dict[str, Any]) -> dict[str, Any]:
    """Body of the Ray task: run in a temporary directory on the node, return the archive."""
    with tempfile.TemporaryDirectory(prefix="catapults-trial-") as tmp:
        local = dict(task, dir=str(Path(tmp) / task["id"]))
        res = execute_trial(local)
        res["archive"] = _pack(Path(local["dir"])) if Path(local["dir"]).exists() else None
    return res


# ---- the index --------------------------------------------------------------------------------
def read_trial_status(trial_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """(status, summary) of a trial directory: 'pending' (none), 'unfinished' (no summary),
    or the summary's status."""
    if not trial_dir.is_dir():
        return "pending", None
    try:
        summary = json.loads((trial_dir / "summary.json").read_text())
    except (OSError, ValueError):  # missing, half-written, not JSON or not text
        return "unfinished", None
    if not isinstance(summary, dict):
        return "unfinished", None
    return str(summary.get("status", "unfinished")), summary


def count_statuses(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many index rows have each status."""
    return dict(collections.Counter(r["status"] for r in rows))


def read_index(sweep_dir: str | Path, *, strict: bool = False) -> list[dict[str, Any]]:
    """The rows of ``DIR/index.jsonl``. ``strict``: a line that is not a row (corrupt JSON, not
    an object with ``trial_id``, ``params`` and ``status``) is a :class:`ConfigError` naming the
    file and line, instead of the JSON/key error a resuming sweep catches to rebuild the index."""
    path = Path(sweep_dir) / "index.jsonl"
    if not path.is_file():
        raise ConfigError(f"{sweep_dir}: not a sweep directory (no index.jsonl)")
    rows = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not an index (binary data)") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not strict:
            rows.append(json.loads(line))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: line {n}: corrupt or truncated JSON ({err.msg})") from None
        if not (isinstance(row, dict) and isinstance(row.get("trial_id"), str)
                and isinstance(row.get("params"), dict) and isinstance(row.get("status"), str)
                and isinstance(row.get("dir", ""), str)):
            raise ConfigError(f"{path}: line {n}: not an index row (an object with trial_id, "
                              "params, status)")
        rows.append(row)
    return rows


class _Index:
    """The in-memory index of a sweep, written atomically (jsonl + csv) on every change."""

    def __init__(self, sweep: Sweep, sweep_dir: Path) -> None:
        self.sweep, self.dir = sweep, sweep_dir
        previous = {}
        if (sweep_dir / "index.jsonl").is_file():
            try:  # the trial directories are the truth; a damaged index is rebuilt
                previous = {r["trial_id"]: r for r in read_index(sweep_dir, strict=True)}
            except ConfigError:
                previous = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.started: dict[str, float] = {}  # trial id -> hand-out time, until recorded
        for t in sweep.trials:
            status, summary = read_trial_status(self.trial_dir(t))
            old = previous.get(t.id, {})
            row = {"trial_id": t.id, "params": t.params, "seed": t.seed,
                   "status": status, "attempts": int(old.get("attempts", 0)),
                   "finished_at": old.get("finished_at"), "dir": f"trials/{t.id}"}
            self.rows[t.id] = row
            self._fill(row, summary)

    def trial_dir(self, t: Trial) -> Path:
        return self.dir / "trials" / t.id

    def _fill(self, row: dict[str, Any], summary: dict[str, Any] | None) -> None:
        summary = summary or {}
        row["metrics"] = {m: jsonable(get_dotted(summary, m)) for m in self.sweep.metrics}
        row["steps"] = summary.get("steps")
        row["wall_time_s"] = jsonable(summary.get("wall_time_s"))
        row["error"] = summary.get("error")

    def start(self, tid: str) -> None:
        """A trial is handed out: it counts as an attempt from now on, and the index on disk
        says ``running`` (a sweep killed outright still shows the attempt)."""
        row = self.rows[tid]
        self.started[tid] = time.time()
        row["status"] = "running"
        row["attempts"] += 1
        self.write()

    def record(self, tid: str, status: str, summary: dict[str, Any] | None, *,
               write: bool = True) -> None:
        self.started.pop(tid, None)
        row = self.rows[tid]
        row["status"] = status
        row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._fill(row, summary)
        if write:
            self.write()

    def fresh_status(self, tid: str) -> tuple[str, dict[str, Any] | None]:
        """The status a trial's directory shows, ignoring a summary older than the hand-out
        (left by a previous attempt when this one died before it began): 'unfinished'."""
        trial_dir = self.dir / self.rows[tid]["dir"]
        status, summary = read_trial_status(trial_dir)
        since = self.started.get(tid)
        if summary is not None and since is not None:
            try:
                if (trial_dir / "summary.json").stat().st_mtime < since - 1.0:
                    return "unfinished", None
            except OSError:
                pass
        return status, summary

    def reconcile(self) -> None:
        """After a stop: each trial handed out but not recorded takes the status its directory
        shows ('failed' if it recorded its interruption, 'unfinished' if it had no time to);
        then the index is written."""
        for tid in list(self.started):
            self.record(tid, *self.fresh_status(tid), write=False)
        self.write()

    def counts(self) -> dict[str, int]:
        return count_statuses(self.rows.values())

    def write(self) -> None:
        rows = list(self.rows.values())
        write_text_atomic(self.dir / "index.jsonl", "".join(_dumps(r) + "\n" for r in rows))
        head = (["trial_id", "status", "attempts"] + self.sweep.swept + ["seed"]
                + self.sweep.metrics + ["steps", "wall_time_s", "finished_at", "error"])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(head)
        for r in rows:
            w.writerow([r["trial_id"], r["status"], r["attempts"]]
                       + [format_value(r["params"][k]) if k in r["params"] else ""
                          for k in self.sweep.swept]
                       + ["" if r["seed"] is None else r["seed"]]
                       + ["" if r["metrics"][m] is None else r["metrics"][m]
                          for m in self.sweep.metrics]
                       + ["" if r[k] is None else r[k]
                          for k in ("steps", "wall_time_s", "finished_at", "error")])
        write_text_atomic(self.dir / "index.csv", buf.getvalue())


# ---- running a sweep --------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What :func:`run_sweep` returns."""

    dir: Path
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    ran: int
    skipped: int
    interrupted: bool = False


class _Lock:
    """``DIR/.sweep.lock``: an exclusive lock held by the OS (``flock``; ``msvcrt`` on Windows)
    while a sweep writes the directory, with the holder's pid in the file for the message. The
    OS drops the lock when its process dies, so the file a killed sweep leaves is taken over."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = sweep_dir / ".sweep.lock"
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(f"{self.path.parent}: the sweep directory is in use by another "
                                  f"sweep (process {holder}); wait for it, or choose another --out")
            try:  # the holder may have removed the file between our open and lock: retry
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self.fd = fd
            return self
        raise ConfigError(f"{self.path}: could not take the sweep lock")

    def __exit__(self, *exc) -> None:
        try:
            self.path.unlink(missing_ok=True)  # first: a process waiting on it sees a new inode
        except OSError:  # pragma: no cover - Windows cannot remove an open file
            pass
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _try_lock(fd: int) -> bool:
    try:
        if os.name == "nt":  # pragma: no cover
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _check_stored_config(t: Trial, trial_dir: Path) -> None:
    """A finished trial's stored config must match the sweep's (else the sweep was edited)."""
    path = trial_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        stored = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return
    old, new = _flatten(stored), _flatten(t.config.to_dict())

    def ignored(k: str) -> bool:
        return any(k == f or k.startswith(f + ".") for f in _IGNORED_FIELDS)

    for key in sorted(set(old) | set(new)):
        if ignored(key):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, list) or isinstance(b, list):
            a, b = list(a or []), list(b or [])
        if a != b:
            raise ConfigError(
                f"{trial_dir}: trial {t.id} was run with {key}={format_value(a)}, the sweep now "
                f"says {format_value(b)} (was the sweep file edited?); use another --out")


class _Progress:
    def __init__(self, total: int, skipped: int, enabled: bool) -> None:
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="sweep", unit="trial", file=sys.stderr,
                            dynamic_ncols=True)
        self.skipped = skipped
        self.counts = {"completed": 0, "diverged": 0, "failed": 0}

    def update(self, status: str | None, running: int) -> None:
        if status is not None:
            key = status if status in self.counts else "failed"
            self.counts[key] += 1
        if self.bar is None:
            return
        self.bar.set_postfix(running=running, failed=self.counts["failed"],
                             diverged=self.counts["diverged"], skipped=self.skipped,
                             refresh=False)
        self.bar.update(1 if status is not None else 0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(sweep: Sweep | str | Path | dict[str, Any], out_dir: str | Path | None = None, *,
              workers: int | None = None, threads: int | None = None, backend: str = "local",
              address: str | None = None, progress: bool = True, report: bool = True,
              overrides: Iterable[str] = (), stop: threading.Event | None = None) -> SweepResult:
    """Run every unfinished trial of a sweep into ``out_dir`` and write the index (and the report).

    The Python face of ``catapults sweep``. ``workers`` defaults to the number of cores (local)
    or to as many trials as the Ray cluster takes; ``threads`` (torch threads per trial) defaults
    to ``cores // workers`` (at least 1) for the local backend and 1 for Ray. On Ctrl-C the
    running trials are stopped, recorded as failed (retried next time), the index is written and
    ``KeyboardInterrupt`` is raised again. From a thread other than the main one (where Ctrl-C
    does not arrive), pass a :class:`threading.Event` as ``stop`` and set it to stop the sweep
    the same way.

    With more than one local worker the trials run in ``spawn`` processes, which import the
    calling script again: call ``run_sweep`` from a script under ``if __name__ == "__main__":``.
    """
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend: {backend!r}: expected 'local' or 'ray'")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: must be >= 1, got {threads}")
    cores = cpu_count()
    if backend == "local":
        workers = workers or cores
        threads = threads or max(1, cores // workers)
    else:
        threads = threads or 1
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep, overrides, threads=threads)
    else:
        for t in sweep.trials:
            if "train.threads" not in t.params:
                t.config.train.threads = threads
    sweep_dir = Path(out_dir) if out_dir is not None else sweep.default_dir()
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError(f"--out: {sweep_dir} exists and is not a directory")
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()) and not (sweep_dir / "index.jsonl").exists():
        raise ConfigError(f"--out: {sweep_dir} exists and is not a sweep directory (no "
                          "index.jsonl); choose another directory")
    unfinished = []
    for t in sweep.trials:  # everything is checked before anything is written
        tdir = sweep_dir / "trials" / t.id
        if read_trial_status(tdir)[0] in FINISHED:
            _check_stored_config(t, tdir)
        else:
            unfinished.append(t)
    if backend == "local":  # (on a Ray cluster the data files may live on the nodes only)
        check_trials(sweep, unfinished)

    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _Lock(sweep_dir):
        write_text_atomic(sweep_dir / "sweep.yaml", yaml.safe_dump(sweep.spec, sort_keys=False))
        index = _Index(sweep, sweep_dir)
        index.write()
        todo = [t for t in sweep.trials if index.rows[t.id]["status"] not in FINISHED]
        skipped = len(sweep.trials) - len(todo)
        tasks = [{"id": t.id, "dir": str(index.trial_dir(t)), "config": t.config.to_dict(),
                  "threads": t.config.train.threads or threads} for t in todo]
        for task in tasks:
            task["config"]["output"]["dir"] = task["dir"]
        bar = _Progress(len(tasks), skipped, progress)
        interrupted = False
        try:
            if not tasks:
                pass
            elif backend == "ray":
                _run_ray(tasks, index, bar, workers=workers, address=address, stop=stop)
            elif workers == 1:
                _run_inline(tasks, index, bar, threads, stop)
            else:
                _run_pool(tasks, index, bar, workers=workers, threads=threads, stop=stop)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
            index.reconcile()  # trials stopped mid-way: their status as left on disk
            for stray in sweep_dir.glob(".*.tmp-*"):
                stray.unlink(missing_ok=True)
            for t in todo:  # from workers killed while writing
                for stray in index.trial_dir(t).rglob(".*.tmp-*"):
                    stray.unlink(missing_ok=True)
        if interrupted:
            raise KeyboardInterrupt
    if report:
        try:
            sweep_report(sweep_dir)
        except ConfigError:
            pass
    return SweepResult(sweep_dir, list(index.rows.values()), index.counts(), len(tasks),
                       skipped, interrupted)


class _StopWhenSet(Callback):
    """Ends a trial running in this process when another thread sets ``event``."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_step_end(self, state: Any, record: dict[str, Any]) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt


def _run_inline(tasks: list[dict[str, Any]], index: _Index, bar: _Progress,
                threads: int, stop: threading.Event | None = None) -> None:
    import torch

    before = torch.get_num_threads()
    callbacks = [] if stop is None else [_StopWhenSet(stop)]
    try:
        for i, task in enumerate(tasks):
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            index.start(task["id"])
            bar.update(None, 1)
            res = execute_trial(task, catch_interrupt=False, callbacks=callbacks)
            index.record(task["id"], res["status"], res["summary"])
            bar.update(res["status"], 1 if i + 1 < len(tasks) else 0)
    finally:
        torch.set_num_threads(before)


def _run_pool(tasks: list[dict[str, Any]], index: _Index, bar: _Progress, *, workers: int,
              threads: int, stop: threading.Event | None = None) -> None:
    """The local backend: :func:`catapults.workers.run_tasks` over :func:`execute_trial`."""
    from catapults.workers import run_tasks

    def on_start(task: dict[str, Any], running: int) -> None:
        index.start(task["id"])
        bar.update(None, running)

    def on_done(task: dict[str, Any], answer: tuple[bool, Any] | None, running: int) -> None:
        if answer is not None and answer[0]:
            res = answer[1]
        else:  # the worker died (killed, out of memory, segfault), or execute_trial raised
            error = "worker process died" if answer is None else answer[1]
            status, summary = read_trial_status(Path(task["dir"]))
            if summary is None or status not in ("failed", *FINISHED):
                summary = _failure_summary(error)
                write_text_atomic(Path(task["dir"]) / "summary.json",
                                  json.dumps(summary, indent=2) + "\n")
            res = {"status": summary["status"], "summary": summary}
        index.record(task["id"], res["status"], res["summary"])
        bar.update(res["status"], running)

    run_tasks(tasks, "catapults.sweeps:execute_trial", workers=workers, threads=threads,
              on_start=on_start, on_done=on_done, stop=stop)


def _run_ray(tasks: list[dict[str, Any]], index: _Index, bar: _Progress, *,
             workers: int | None, address: str | None,
             stop: threading.Event | None = None) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray: ray is not installed (pip install 'catapults[ray]' "
                          "or -r requirements-ray.txt)") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(num_cpus=cpu_count(), include_dashboard=False)
        try:
            ray.init(**kwargs)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise ConfigError(f"--address: cannot connect to Ray at {address!r}: {err}") from None
        started = True
    try:
        remote = ray.remote(_ray_trial)
        limit = workers or len(tasks)
        queue = list(tasks)
        inflight: dict[Any, dict[str, Any]] = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < limit:
                    task = queue.pop(0)
                    ref = remote.options(num_cpus=task["threads"], max_retries=0).remote(task)
                    inflight[ref] = task
                    index.start(task["id"])
                bar.update(None, len(inflight))
                done: list[Any] = []
                while not done:
                    if stop is not None and stop.is_set():
                        raise KeyboardInterrupt
                    done, _ = ray.wait(list(inflight), num_returns=1,
                                       timeout=None if stop is None else 0.5)
                for ref in done:
                    task = inflight.pop(ref)
                    try:
                        res = ray.get(ref)
                    except Exception as err:  # the task or its worker died
                        res = {"status": "failed", "summary": _failure_summary(
                            f"ray task failed: {type(err).__name__}: {err}"), "archive": None}
                    target = Path(task["dir"])
                    if res.get("archive"):
                        _unpack(res["archive"], target)
                    else:
                        target.mkdir(parents=True, exist_ok=True)
                        (target / "summary.json").write_text(json.dumps(res["summary"]) + "\n")
                    index.record(task["id"], res["status"], res["summary"])
                    bar.update(res["status"], len(inflight))
        except KeyboardInterrupt:
            for ref in inflight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            raise
    finally:
        if started:
            ray.shutdown()


# ---- aggregation ------------------------------------------------------------------------------
@dataclass
class Report:
    """What :func:`sweep_report` returns: the grouped table, the CSV and figure paths."""

    groups: list[dict[str, Any]]
    csv: Path
    figures: list[Path]
    metrics: list[str]
    swept: list[str]


def _stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    return {"n": n, "mean": statistics.fmean(values) if n else None,
            "std": statistics.stdev(values) if n >= 2 else None,
            "min": min(values) if n else None, "max": max(values) if n else None}


def sweep_report(sweep_dir: str | Path, *, metrics: Iterable[str] | None = None,
                 include: Iterable[str] = ("completed",), figures: bool = True) -> Report:
    """Aggregate a sweep directory: each metric grouped by the swept parameters (mean, sample
    std (ddof 1), n over the seeds; trials whose status is in ``include``, finite values only)
    into ``DIR/report/report.csv``, and one figure per (metric, swept parameter)."""
    sweep_dir = Path(sweep_dir)
    rows = read_index(sweep_dir, strict=True)
    spec: Any = {}
    spec_path = sweep_dir / "sweep.yaml"
    if spec_path.exists():
        from catapults.config import read_yaml

        spec = read_yaml(spec_path, "sweep file") or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{spec_path}: expected a mapping (a sweep file)")
        if not isinstance(spec.get("metrics") or [], list) or not all(
                isinstance(m, str) and m for m in spec.get("metrics") or []):
            raise ConfigError(f"{spec_path}: metrics: must be a list of dotted names")
    metric_list = list(metrics) if metrics else list(spec.get("metrics") or DEFAULT_METRICS)
    include = set(include)
    swept: list[str] = []
    for r in rows:
        swept += [k for k in r["params"] if k not in swept]
    summaries: dict[str, dict[str, Any] | None] = {}
    for r in rows:
        trial_dir = sweep_dir / r.get("dir", f"trials/{r['trial_id']}")
        status, summaries[r["trial_id"]] = read_trial_status(trial_dir)
        if status == "unfinished" and (trial_dir / "summary.json").is_file():
            raise ConfigError(f"{trial_dir / 'summary.json'}: not a run summary (expected a "
                              "JSON object; re-run the sweep to run this trial again)")
    known = {k for s in summaries.values() if s for k in _flatten(s)}
    unknown = [m for m in metric_list if m not in known]
    if known and unknown:
        numeric = ", ".join(sorted({k for s in summaries.values() if s
                                    for k, v in _flatten(s).items() if _as_float(v) is not None}))
        what = f"metric {', '.join(map(repr, unknown))} found in no trial's summary.json"
        if metrics:
            raise ConfigError(f"{what} (known: {numeric})")
        if spec.get("metrics"):
            print(f"catapults: warning: {spec_path}: {what} (known: {numeric})", file=sys.stderr)

    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        params = {k: r["params"].get(k) for k in swept}
        key = _dumps(params)
        g = groups.setdefault(key, {"params": params, "trials": 0, "statuses": {}, "values": {
            m: [] for m in metric_list}, "seeds": {m: [] for m in metric_list}})
        g["trials"] += 1
        g["statuses"][r["status"]] = g["statuses"].get(r["status"], 0) + 1
        if r["status"] not in include:
            continue
        summary = summaries[r["trial_id"]]
        for m in metric_list:
            v = _as_float(get_dotted(summary or {}, m))
            if v is not None:
                g["values"][m].append(v)
                g["seeds"][m].append(r.get("seed"))
    table = []
    for g in groups.values():
        entry = {"params": g["params"], "trials": g["trials"],
                 "completed": g["statuses"].get("completed", 0),
                 "diverged": g["statuses"].get("diverged", 0),
                 "failed": sum(v for k, v in g["statuses"].items() if k not in FINISHED),
                 "stats": {m: _stats(g["values"][m]) for m in metric_list},
                 "values": g["values"]}
        table.append(entry)

    out = sweep_dir / "report"
    csv_path = out / "report.csv"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory (the report goes there)")
    pngs = [out / f"{_safe(m)}__vs__{_safe(p)}.png" for m in metric_list for p in swept]
    for path in [csv_path] + (pngs if figures else []):
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory (the report writes a file there)")
    head = swept + ["trials", "completed", "diverged", "failed"]
    for m in metric_list:
        head += [f"{m}.mean", f"{m}.std", f"{m}.n"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for e in table:
        line = [format_value(e["params"][k]) for k in swept]
        line += [e["trials"], e["completed"], e["diverged"], e["failed"]]
        for m in metric_list:
            s = e["stats"][m]
            line += [_fmt_csv(s["mean"]), _fmt_csv(s["std"]), s["n"]]
        w.writerow(line)
    write_text_atomic(csv_path, buf.getvalue())
    paths = []
    if figures:
        for m in metric_list:
            for p in swept:
                path = _plot_metric(table, m, p, swept, out)
                if path is not None:
                    paths.append(path)
    return Report(table, csv_path, paths, metric_list, swept)


def _fmt_csv(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def use_log_x(param: str, xs: list[float]) -> bool:
    """Log-x for positive learning rates, batch sizes, widths..., or values spanning 100x."""
    if not xs or min(xs) <= 0:
        return False
    return param.split(".")[-1] in LOG_X_FIELDS or max(xs) / min(xs) >= 100


def _plot_metric(table: list[dict[str, Any]], metric: str, param: str, swept: list[str],
                 out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(e["stats"][metric]["n"] for e in table):
        return None
    values = []
    for e in table:
        v = e["params"][param]
        if v not in values:
            values.append(v)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        def pos(v):
            return float(v)
    else:
        def pos(v):
            return float(values.index(v))
    others = [k for k in swept if k != param]
    lines: dict[str, list[dict[str, Any]]] = {}
    for e in table:
        label = ", ".join(f"{k.split('.')[-1]}={format_value(e['params'][k])}" for k in others)
        lines.setdefault(label, []).append(e)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, entries) in enumerate(lines.items()):
        entries = sorted((e for e in entries if e["stats"][metric]["n"]),
                         key=lambda e: pos(e["params"][param]))
        if not entries:
            continue
        color = f"C{i % 10}"
        xs = [pos(e["params"][param]) for e in entries]
        means = [e["stats"][metric]["mean"] for e in entries]
        stds = [e["stats"][metric]["std"] or 0.0 for e in entries]
        ax.plot(xs, means, "o-", color=color,
                label=f"{label}: mean ± std" if label else "mean ± std over seeds")
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)],
                        [m + s for m, s in zip(means, stds)], color=color, alpha=0.2, lw=0)
        for x, e in zip(xs, entries):
            vals = e["values"][metric]
            ax.scatter([x] * len(vals), vals, color=color, s=10, alpha=0.5, zorder=3)
    if numeric and use_log_x(param, [float(v) for v in values]):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([float(v) for v in values])
        ax.set_xticklabels([format_value(v) for v in values])
    if not numeric:
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([format_value(v) for v in values])
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    n_seeds = max(e["stats"][metric]["n"] for e in table)
    ax.set_title(f"{metric} vs {param} (up to {n_seeds} seed(s) per point)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = out / f"{_safe(metric)}__vs__{_safe(param)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def format_report(report: Report) -> str:
    """The report table as aligned text (mean ± std (n) per metric)."""
    head = report.swept + ["ok/div/fail"] + report.metrics
    rows = []
    for e in report.groups:
        line = [format_value(e["params"][k]) for k in report.swept]
        line.append(f"{e['completed']}/{e['diverged']}/{e['failed']}")
        for m in report.metrics:
            s = e["stats"][m]
            if not s["n"]:
                line.append("-")
            else:
                std = "" if s["std"] is None else f" ± {s['std']:.3g}"
                line.append(f"{s['mean']:.4g}{std} (n={s['n']})")
        rows.append(line)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


# ---- command line -----------------------------------------------------------------------------
def add_sweep_parsers(subparsers) -> None:
    """Add ``sweep`` and ``sweep-report`` to the CLI's argparse subparsers."""
    from catapults.cli import positive_int

    p = subparsers.add_parser(
        "sweep", help="run a sweep (base config x grid x seeds); re-running resumes it")
    p.add_argument("sweep", help="sweep YAML file (base/base_config, grid, trials, seeds, "
                   "metrics)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="parallel trials (local: worker processes, default: the number of "
                   "cores; 1 runs trials in this process; ray: most tasks in flight)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads per trial (default: cores // workers for local, 1 for ray)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="'local' process pool (default) or 'ray' tasks")
    p.add_argument("--address", default=None,
                   help="ray: address of an existing cluster (default: start a local instance)")
    p.add_argument("--out", default=None,
                   help="sweep directory (default: the sweep file's `out`, else "
                   "runs/sweeps/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the base config (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and list the trials and their status; run nothing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")

    r = subparsers.add_parser(
        "sweep-report", help="aggregate a sweep directory: CSV table and figures")
    r.add_argument("dir", help="sweep directory")
    r.add_argument("--metric", dest="metrics", action="append", default=None, metavar="KEY",
                   help="summary metric to aggregate (dotted, repeatable; default: the sweep's)")
    r.add_argument("--include-diverged", action="store_true",
                   help="also aggregate diverged trials (default: completed trials only)")
    r.add_argument("--no-figures", action="store_true", help="write the CSV only")


def cmd_sweep(args) -> int:
    """``catapults sweep``: 0 when every trial completed or diverged, 1 when some failed."""
    if args.address and args.backend != "ray":
        raise ConfigError("--address: only with --backend ray")
    if args.backend == "local":
        workers = args.workers or cpu_count()
        threads = args.threads or max(1, cpu_count() // workers)
    else:
        workers, threads = args.workers, args.threads or 1
    sweep = load_sweep(args.sweep, args.overrides, threads=threads)
    if args.dry_run:
        out = Path(args.out) if args.out else sweep.default_dir()
        if args.backend == "local":
            check_trials(sweep)
        for t in sweep.trials:
            status, _ = read_trial_status(out / "trials" / t.id)
            print(f"{t.id}  {status}  {t.label()}")
        print(f"{len(sweep.trials)} trials, sweep directory {out}")
        return 0
    import signal

    def terminate(signum, frame):  # a job scheduler's SIGTERM stops the sweep like Ctrl-C
        raise KeyboardInterrupt

    out = Path(args.out) if args.out else sweep.default_dir()
    check_output_path(out, "--out" if args.out else f"{args.sweep}: out")
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        res = run_sweep(sweep, out, workers=workers, threads=threads, backend=args.backend,
                        address=args.address, progress=not args.no_progress, report=False)
    except KeyboardInterrupt:
        if (out / "index.jsonl").is_file():
            counts = count_statuses(read_index(out))
            done = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            print(f"sweep stopped: {done}; index {out / 'index.csv'}. Run the same command "
                  "again to resume (finished trials are kept).", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    c = res.counts
    failed = len(res.rows) - c.get("completed", 0) - c.get("diverged", 0)
    print(f"{len(res.rows)} trials: {c.get('completed', 0)} completed, "
          f"{c.get('diverged', 0)} diverged, {failed} failed or unfinished "
          f"({res.skipped} already done, {res.ran} run now)")
    print(f"sweep directory: {res.dir}  (index: {res.dir / 'index.csv'})")
    if not args.no_report:
        rep = sweep_report(res.dir)
        print(format_report(rep))
        print(f"report: {rep.csv}" + (f"  figures: {rep.csv.parent}" if rep.figures else ""))
    return 1 if failed else 0


def cmd_sweep_report(args) -> int:
    """``catapults sweep-report DIR``."""
    include = ("completed", "diverged") if args.include_diverged else ("completed",)
    if any(not m.strip() for m in args.metrics or []):
        raise ConfigError("--metric: empty name (a dotted key of summary.json, e.g. "
                          "final_test_loss)")
    rep = sweep_report(args.dir, metrics=args.metrics, include=include,
                       figures=not args.no_figures)
    print(format_report(rep))
    print(f"report: {rep.csv}" + (f"  ({len(rep.figures)} figures in {rep.csv.parent})"
                                   if rep.figures else ""))
    return 0


COMMANDS = {"sweep": cmd_sweep, "sweep-report": cmd_sweep_report}
