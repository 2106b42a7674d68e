"""The index of a sweep directory: one row per trial, and the statuses read from the trials.

``DIR/index.jsonl`` and ``DIR/index.csv`` hold one row per trial (id, parameters, seed, status,
attempts, metrics), rewritten atomically after every trial. The trial directories are the truth:
the status of a trial is read from its ``summary.json``, and a damaged index is rebuilt from them.
A re-run skips trials that ``completed`` or ``diverged`` (:data:`FINISHED`: a result) and runs again
those that ``failed``, were interrupted, or never finished.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from catapults.config import ConfigError
from catapults.storage.atomic import jsonable, write_text_atomic
from catapults.sweeps.spec import Sweep, Trial, canonical_json, format_value, get_dotted

FINISHED = ("completed", "diverged")  # a re-run skips these


def read_trial_status(trial_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """(status, summary) of a trial directory: 'pending' (none), 'unfinished' (no summary),
    or the summary's status."""
    if not trial_dir.is_dir():
        return "pending", None
    try:
        summary = _loads((trial_dir / "summary.json").read_text())
    except (OSError, ValueError):  # missing, half-written, not JSON, not text, too deep
        return "unfinished", None
    if not isinstance(summary, dict):
        return "unfinished", None
    return str(summary.get("status", "unfinished")), summary


def _loads(text: str) -> Any:
    """``json.loads``, with nesting too deep for Python reported as a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


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
            rows.append(_loads(line))
            continue
        try:
            row = _loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: line {n}: corrupt or truncated JSON ({err.msg})") from None
        except ValueError as err:
            raise ConfigError(f"{path}: line {n}: {err}") from None
        if not (isinstance(row, dict) and isinstance(row.get("trial_id"), str)
                and isinstance(row.get("params"), dict) and isinstance(row.get("status"), str)
                and isinstance(row.get("dir", ""), str)):
            raise ConfigError(f"{path}: line {n}: not an index row (an object with trial_id, "
                              "params, status)")
        rows.append(row)
    return rows


class Index:
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
        write_text_atomic(self.dir / "index.jsonl", "".join(canonical_json(r) + "\n" for r in rows))
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

