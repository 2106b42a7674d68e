"""Running a sweep: every unfinished trial, on a local process pool, in this process, or on Ray.

Backends: ``local`` (a pool of ``spawn`` worker processes, :mod:`catapults.workers`,
``--workers`` of them with ``--threads`` torch threads each, workers x threads <= cores by
default; one worker runs the trials in this process) and ``ray`` (each trial a Ray task on the
cluster at ``--address``, or on a local instance; see :func:`catapults.sweeps.trial.ray_trial`).

Before anything is written every trial's config is checked, and a trial whose stored config
differs from the sweep's (the sweep file was edited) is an error rather than silently reused.

Stopping: on Ctrl-C the running trials are interrupted (each records ``status: failed, reason:
interrupted`` in its ``summary.json``), every worker is stopped, the index is written and
``KeyboardInterrupt`` is raised; ``catapults sweep`` also treats SIGTERM this way.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from catapults.config import ConfigError
from catapults.storage.atomic import write_text_atomic
from catapults.sweeps.index import FINISHED, Index, read_trial_status
from catapults.sweeps.lock import SweepLock
from catapults.sweeps.report import sweep_report
from catapults.sweeps.spec import Sweep, Trial, check_trials, flatten, format_value, load_sweep
from catapults.sweeps.trial import execute_trial, failure_summary, ray_trial, unpack_dir
from catapults.training import Callback
from catapults.workers import run_tasks

# fields that do not change what a trial computes (ignored when comparing with a stored config)
_IGNORED_FIELDS = ("output", "train.threads", "train.device")


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns."""

    dir: Path
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    ran: int
    skipped: int
    interrupted: bool = False


def _check_stored_config(t: Trial, trial_dir: Path) -> None:
    """A finished trial's stored config must match the sweep's (else the sweep was edited)."""
    path = trial_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        stored = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return
    old, new = flatten(stored), flatten(t.config.to_dict())

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
        raise ConfigError(f"backend: {backend!r}: expected 'local' or 'ray'")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads: must be >= 1, got {threads}")
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
        raise ConfigError(f"sweep directory {sweep_dir} exists and is not a directory")
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()) and not (sweep_dir / "index.jsonl").exists():
        raise ConfigError(f"sweep directory {sweep_dir} exists and is not a sweep directory (no "
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
    with SweepLock(sweep_dir):
        write_text_atomic(sweep_dir / "sweep.yaml", yaml.safe_dump(sweep.spec, sort_keys=False))
        index = Index(sweep, sweep_dir)
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

    checkpointed = False  # a control, not a measurement: not part of the trial's checkpoint

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_step_end(self, state: Any, record: dict[str, Any]) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt


def _run_inline(tasks: list[dict[str, Any]], index: Index, bar: _Progress,
                threads: int, stop: threading.Event | None = None) -> None:
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


def _run_pool(tasks: list[dict[str, Any]], index: Index, bar: _Progress, *, workers: int,
              threads: int, stop: threading.Event | None = None) -> None:
    """The local backend: :func:`catapults.workers.run_tasks` over :func:`execute_trial`."""
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
                summary = failure_summary(error)
                write_text_atomic(Path(task["dir"]) / "summary.json",
                                  json.dumps(summary, indent=2) + "\n")
            res = {"status": summary["status"], "summary": summary}
        index.record(task["id"], res["status"], res["summary"])
        bar.update(res["status"], running)

    run_tasks(tasks, "catapults.sweeps.trial:execute_trial", workers=workers, threads=threads,
              on_start=on_start, on_done=on_done, stop=stop)


def _run_ray(tasks: list[dict[str, Any]], index: Index, bar: _Progress, *,
             workers: int | None, address: str | None,
             stop: threading.Event | None = None) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("backend 'ray': ray is not installed (pip install 'catapults[ray]' "
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
            raise ConfigError(f"address: cannot connect to Ray at {address!r}: {err}") from None
        started = True
    try:
        remote = ray.remote(ray_trial)
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
                        res = {"status": "failed", "summary": failure_summary(
                            f"ray task failed: {type(err).__name__}: {err}"), "archive": None}
                    target = Path(task["dir"])
                    if res.get("archive"):
                        unpack_dir(res["archive"], target)
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


