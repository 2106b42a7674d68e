"""Running one trial: in a worker process of the local pool, in a Ray task, or in this process.

A trial writes an ordinary run directory (see :mod:`catapults.runs`). :func:`execute_trial` never
raises for a failing trial: the failure goes to the trial's ``summary.json`` (``status: failed``,
with ``reason: interrupted`` for Ctrl-C / SIGTERM) and ``traceback.txt``. A Ray task
(:func:`ray_trial`) runs in a temporary directory on its node and ships the run directory back as
a tar archive (:func:`pack_dir`, :func:`unpack_dir`), so no shared file system is needed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from catapults import runs
from catapults.config import config_from_dict
from catapults.storage.atomic import write_text_atomic
from catapults.storage.rundir import describe_error
from catapults.training import Callback


def failure_summary(error: str, reason: str = "failed") -> dict[str, Any]:
    """The ``summary.json`` of a trial that failed before its run could write one."""
    return {"status": "failed", "reason": reason, "error": error}


def execute_trial(task: dict[str, Any], *, catch_interrupt: bool = True,
                  callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Run one trial into ``task['dir']`` and return ``{'id', 'status', 'summary', 'error'}``.
    A trial directory left by a killed or interrupted attempt that can be resumed (its
    checkpoint from ``output.checkpoint_every``, written with this trial's config, threads
    aside) is resumed
    with :func:`catapults.runs.resume`, so it ends as the uninterrupted trial would; anything
    else there is replaced by a fresh run. Never raises for a failing trial: the failure is
    written to the trial's ``summary.json`` (and ``traceback.txt``) and returned. An interrupt
    (``KeyboardInterrupt``, which is what SIGTERM raises in a worker process) is recorded the
    same way, with reason ``interrupted``, and re-raised if ``catch_interrupt`` is false."""
    out = Path(task["dir"])
    t0 = time.perf_counter()
    try:
        cfg = config_from_dict(task["config"])
        # a resumed trial keeps its threads (bit for bit), whatever this sweep's --threads
        if out.exists() and runs.resume_problem(out, cfg, ignore=("train.threads",)) is None:
            result = runs.resume(out, progress=False, callbacks=callbacks or None)
        else:
            if out.exists():
                shutil.rmtree(out)
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
            except (OSError, ValueError, RecursionError):
                summary = None
        if summary is None:
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            summary = failure_summary(error, reason)
            summary["wall_time_s"] = time.perf_counter() - t0
            write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
        write_text_atomic(out / "traceback.txt", traceback.format_exc())
        if isinstance(err, KeyboardInterrupt) and not catch_interrupt:
            raise
        return {"id": task["id"], "status": "failed", "summary": summary, "error": error}


def pack_dir(directory: Path) -> bytes:
    """A trial directory as a gzipped tar archive (what a Ray task sends back)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return buf.getvalue()


def unpack_dir(data: bytes, target: Path) -> None:
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


def ray_trial(task: dict[str, Any]) -> dict[str, Any]:
    """Body of the Ray task: run in a temporary directory on the node, return the archive."""
    with tempfile.TemporaryDirectory(prefix="catapults-trial-") as tmp:
        local = dict(task, dir=str(Path(tmp) / task["id"]))
        res = execute_trial(local)
        res["archive"] = pack_dir(Path(local["dir"])) if Path(local["dir"]).exists() else None
    return res

