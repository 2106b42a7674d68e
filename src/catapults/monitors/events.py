"""The events monitor: catapults found in the run's loss curve, attributed to the NTK spectrum,
and the early-warning score of batch critical-learning-rate crossings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catapults import metrics
from catapults.detect import attribute_events, early_warning, find_catapults
from catapults.training.callbacks import Callback, StepContext


def analyse_history(history: list[dict[str, Any]], *, ratio: float = 3.0, window: int = 20,
                    return_ratio: float = 1.5, warning_window: int = 5,
                    series: str = "loss") -> dict[str, Any]:
    """Events and early warning of a run from its metrics rows (as in ``metrics.jsonl``).

    Returns ``{"events": [Catapult...], "count", "recovered", "early_warning" (or None)}``.
    """
    rows = [r for r in history if series in r]
    if not rows:
        return {"events": [], "count": 0, "recovered": 0, "early_warning": None, "steps": 0}
    steps = [r["step"] for r in rows]
    events = find_catapults([r[series] for r in rows], ratio=ratio, window=window,
                            return_ratio=return_ratio)
    for ev in events:  # indices into the series -> training steps
        ev.start, ev.peak, ev.end, ev.trigger = (steps[ev.start], steps[ev.peak], steps[ev.end],
                                                 steps[ev.trigger])
    attribute_events(events, history)
    flagged = [r[metrics.STEP] for r in history
               if r.get(metrics.NTK_BATCH_ETA_CRIT) is not None
               and r[metrics.LR] > r[metrics.NTK_BATCH_ETA_CRIT]]
    warn = None
    if any(metrics.NTK_BATCH_ETA_CRIT in r for r in history):
        warn = early_warning(flagged, events, window=warning_window, n_steps=len(rows))
    return {"events": events, "count": len(events),
            "recovered": sum(e.recovered for e in events), "early_warning": warn,
            "steps": len(rows)}


class EventsMonitor(Callback):
    """At the end of training: find the catapults in the loss, attribute each one to the NTK
    monitor's measurements (if that monitor ran), score the early warning (mini-batch runs with
    batch kernels), write ``events.json`` and ``figures/events.png``; the count goes into
    ``summary.json``. It keeps nothing between steps (it reads the trainer's history, which a
    checkpoint holds), so its ``state_dict`` is empty."""

    name = "events"

    def __init__(self, *, ratio: float = 3.0, window: int = 20, return_ratio: float = 1.5,
                 warning_window: int = 5, series: str = "loss") -> None:
        self.kw = dict(ratio=ratio, window=window, return_ratio=return_ratio,
                       warning_window=warning_window, series=series)
        self.result: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []

    def on_train_end(self, state: StepContext, summary: dict[str, Any]) -> None:
        self.history = state.history
        self.result = analyse_history(state.history, **self.kw)
        summary["monitors"]["events"] = {
            "count": self.result["count"], "recovered": self.result["recovered"],
            "early_warning": self.result["early_warning"]}

    def write_artifacts(self, run_dir: str | Path, *, figures: bool = True) -> None:
        from catapults.storage.atomic import write_json_atomic

        if self.result is None:
            return
        run_dir = Path(run_dir)
        write_json_atomic(run_dir / "events.json", {
            "parameters": self.kw, "count": self.result["count"],
            "recovered": self.result["recovered"],
            "early_warning": self.result["early_warning"],
            "events": [e.to_dict() for e in self.result["events"]]})
        if figures:
            from catapults.plotting import plot_training

            plot_training(self.history, run_dir / "figures" / "events.png",
                          title=f"{self.result['count']} catapult(s) detected",
                          events=self.result["events"])
