"""The events monitor: catapults found in the run's loss curve (calibrated against its noise),
oscillation episodes, attribution to the NTK spectrum with spectral confirmation, and the
early-warning score of batch critical-learning-rate crossings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catapults import metrics
from catapults.detect import (
    CONFIRM_SHARE,
    DEFAULT_FALSE_POSITIVE_RATE,
    DEFAULT_WINDOW,
    attribute_events,
    detect,
    early_warning,
    label_causes,
    lr_raises,
    raise_warnings,
)
from catapults.monitors.ntk import batch_edge
from catapults.training.callbacks import Callback, StepContext


def analyse_history(history: list[dict[str, Any]], *, ratio: float = 3.0,
                    window: int = DEFAULT_WINDOW, return_ratio: float = 1.5,
                    warning_window: int = 5, series: str = "loss",
                    false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
                    confirm_share: float = CONFIRM_SHARE) -> dict[str, Any]:
    """Events and early warning of a run from its metrics rows (as in ``metrics.jsonl``).

    Returns ``{"events": [Catapult...], "count", "confirmed_count", "recovered",
    "oscillations": [Oscillation...], "calibration", "early_warning" (or None), "steps",
    "lr_raises", "warnings", "causes"}`` (the raises and what they could do:
    :func:`catapults.detect.lr_raises`, :func:`~catapults.detect.raise_warnings`; ``causes``
    counts the catapults by cause, :func:`~catapults.detect.label_causes`, and each event's
    ``info["cause"]`` says its own).
    ``count`` is loss-only; ``confirmed_count`` counts the events confirmed spectrally (top
    eigenspace share ``>= confirm_share`` and ``lambda_max`` lower after than before; None
    when the NTK was not tracked). A claim should use ``confirmed_count`` when it is not None.
    ``calibration`` is the detector's report (noise ``sigma``, ``bar``, ``bar_ratio``, the
    calibrated ``false_positive_rate`` per step, ...); steps in it and in the events are
    training steps.
    """
    rows = [r for r in history if series in r]
    if not rows:
        return {"events": [], "count": 0, "confirmed_count": None, "recovered": 0,
                "oscillations": [], "calibration": None, "early_warning": None, "steps": 0,
                "lr_raises": [], "warnings": [], "causes": label_causes([], [])}
    steps = [r["step"] for r in rows]
    found = detect([r[series] for r in rows], ratio=ratio, window=window,
                   return_ratio=return_ratio, false_positive_rate=false_positive_rate)
    events, oscillations = found.catapults, found.oscillations
    last = len(steps) - 1
    for ev in events:  # indices into the series -> training steps (a divergence: one past)
        ev.start, ev.peak, ev.end, ev.trigger = (steps[min(i, last)] for i in (
            ev.start, ev.peak, ev.end, ev.trigger))
    for osc in oscillations:
        osc.start, osc.end = steps[osc.start], steps[osc.end]
    attribute_events(events, history, confirm_share=confirm_share)
    tracked = any(r.get(metrics.NTK_LAMBDA) for r in history)
    flagged = [r[metrics.STEP] for r in history
               if r.get(metrics.NTK_BATCH_ETA_CRIT) is not None
               and r[metrics.LR] > batch_edge(r)]
    warn = None
    if any(metrics.NTK_BATCH_ETA_CRIT in r for r in history):
        warn = early_warning(flagged, events, window=warning_window, n_steps=len(rows))
    raises = lr_raises(history, events)
    causes = label_causes(events, raises, history, first_step=steps[0])
    return {"events": events, "count": len(events), "lr_raises": raises,
            "warnings": raise_warnings(raises), "causes": causes,
            "confirmed_count": (sum(e.info.get("confirmed") is True for e in events)
                                if tracked else None),
            "recovered": sum(e.recovered for e in events), "oscillations": oscillations,
            "calibration": {**found.calibration, "confirm_share": confirm_share},
            "early_warning": warn, "steps": len(rows)}


class EventsMonitor(Callback):
    """At the end of training: find the catapults and oscillation episodes in the loss,
    attribute each catapult to the NTK monitor's measurements and confirm it spectrally (if
    that monitor ran), score the early warning (mini-batch runs with batch kernels), write
    ``events.json`` and ``figures/events.png``; ``count``, ``confirmed_count`` and the
    calibration go into ``summary.json``. It keeps nothing between steps (it reads the
    trainer's history, which a checkpoint holds), so its ``state_dict`` is empty."""

    name = "events"

    def __init__(self, *, ratio: float = 3.0, window: int = DEFAULT_WINDOW,
                 return_ratio: float = 1.5, warning_window: int = 5, series: str = "loss",
                 false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
                 confirm_share: float = CONFIRM_SHARE) -> None:
        self.kw = dict(ratio=ratio, window=window, return_ratio=return_ratio,
                       warning_window=warning_window, series=series,
                       false_positive_rate=false_positive_rate, confirm_share=confirm_share)
        self.result: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []

    def _counts(self) -> dict[str, Any]:
        res = self.result
        assert res is not None
        return {"count": res["count"], "confirmed_count": res["confirmed_count"],
                "recovered": res["recovered"], "oscillations": len(res["oscillations"]),
                "calibration": res["calibration"], "early_warning": res["early_warning"],
                "lr_raises": res["lr_raises"], "warnings": res["warnings"],
                "causes": res["causes"]}

    def on_train_end(self, state: StepContext, summary: dict[str, Any]) -> None:
        self.history = state.history
        self.result = analyse_history(state.history, **self.kw)
        summary["monitors"]["events"] = self._counts()

    def write_artifacts(self, run_dir: str | Path, *, figures: bool = True) -> None:
        from catapults.storage.atomic import write_json_atomic

        if self.result is None:
            return
        run_dir = Path(run_dir)
        write_json_atomic(run_dir / "events.json", {
            "parameters": self.kw, **self._counts(),
            "events": [e.to_dict() for e in self.result["events"]],
            "oscillation_episodes": [o.to_dict() for o in self.result["oscillations"]]})
        if figures:
            from catapults.plotting import plot_training

            plot_training(self.history, run_dir / "figures" / "events.png",
                          title=f"{self.result['count']} catapult(s) detected",
                          events=self.result["events"])
