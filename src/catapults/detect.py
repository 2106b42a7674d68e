"""Catapult detection in loss curves, attribution to the NTK spectrum, and early warning.

Algorithm of :func:`find_catapults` (one pass, causal except for locating start and end):

1. The *baseline* at step t is the minimum of the last ``window`` losses that lie outside any
   event found so far ("calm" steps). A minimum (not a mean) keeps the baseline low during a slow
   exponential rise, so slow catapults are caught; multiplicative noise of +-30% around a
   decreasing trend moves a loss at most 1.3/0.7 < 1.9 times above it, below the default ratio 3.
2. An event *triggers* at the first step whose loss is at least ``ratio`` x baseline.
3. Its ``start`` is the step of the smallest calm loss in the ``window`` steps before the trigger
   (the bottom from which the loss rose); its ``peak`` is the largest loss before it ends; it
   *ends* at the first step whose loss is back down to ``max(return_ratio x baseline,
   sqrt(baseline x peak))`` - near the baseline, or at least half-way down in log scale (after a
   catapult the loss often settles above its old level for a while, then keeps falling).
   After an event the calm history restarts at its end, so the baseline is the new level.
4. A loss that never comes back gives one event with ``recovered=False`` ending at the last step.
   A NaN or inf loss ends the series: the event in progress (or a new one starting at the step
   of the last calm minimum) ends there, unrecovered.

Steps are indices into ``losses``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Catapult:
    """One spike: ``start`` (bottom before the rise), ``peak``, ``end`` (back near the baseline),
    all step indices; the baseline and peak losses; ``recovered=False`` for divergence."""

    start: int
    peak: int
    end: int
    baseline_loss: float
    peak_loss: float
    recovered: bool
    trigger: int = -1
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> float:
        """peak_loss / baseline_loss (inf for divergence)."""
        if not math.isfinite(self.peak_loss) or self.baseline_loss <= 0:
            return math.inf
        return self.peak_loss / self.baseline_loss

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["height"] = self.height
        return d


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def find_catapults(
    losses: Sequence[float | None],
    *,
    ratio: float = 3.0,
    window: int = 20,
    return_ratio: float = 1.5,
) -> list[Catapult]:
    """Find catapults (spikes that rise to ``ratio`` x the recent baseline) in a loss series.

    Args:
        losses: one loss per step (full-batch GD losses or noisy SGD losses); ``None``, NaN or
            inf mark divergence.
        ratio: how far above the baseline a spike must rise (default 3).
        window: number of recent calm steps that define the baseline (default 20).
        return_ratio: a spike has ended when the loss is back at or below this multiple of the
            baseline, or half-way down from the peak in log scale (default 1.5; < ratio).

    Returns:
        The events in order; see the module docstring for the exact algorithm.
    """
    if not (math.isfinite(ratio) and ratio > 1):  # NaN fails every comparison
        raise ValueError(f"ratio must be a finite number > 1, got {ratio}")
    if not 1 <= return_ratio < ratio:
        raise ValueError(f"return_ratio must be >= 1 and < ratio ({ratio}), got {return_ratio}")
    if window < 1:
        raise ValueError("window must be >= 1")
    events: list[Catapult] = []
    calm: list[tuple[int, float]] = []  # (step, loss) outside events
    current: Catapult | None = None
    for t, raw in enumerate(losses):
        if not _finite(raw):
            if current is None:
                recent = calm[-window:]
                base = min((v for _, v in recent), default=math.nan)
                start = min(recent, key=lambda sv: sv[1])[0] if recent else t
                current = Catapult(start, t, t, base, math.inf, False, trigger=t)
            current.end, current.peak, current.peak_loss = t, t, math.inf
            current.recovered = False
            events.append(current)
            return events
        loss = float(raw)
        if current is not None:
            if loss > current.peak_loss:
                current.peak, current.peak_loss = t, loss
            base = current.baseline_loss
            if loss <= max(return_ratio * base, math.sqrt(base * current.peak_loss)):
                current.end = t
                events.append(current)
                current = None
                calm = [(t, loss)]
            continue
        recent = calm[-window:]
        if recent:
            base = min(v for _, v in recent)
            if base > 0 and loss >= ratio * base:
                start = min(recent, key=lambda sv: sv[1])[0]
                current = Catapult(start, t, t, base, loss, True, trigger=t)
                continue
        calm.append((t, loss))
    if current is not None:
        current.end = len(losses) - 1
        current.recovered = False
        events.append(current)
    return events


# ---- attribution: what the NTK monitor saw around each event ---------------------------------
def _nearest(rows: list[dict[str, Any]], step: int, *, before: bool | None = None):
    best = None
    for r in rows:
        if before is True and r["step"] > step:
            continue
        if before is False and r["step"] < step:
            continue
        if best is None or abs(r["step"] - step) < abs(best["step"] - step):
            best = r
    return best


def attribute_events(events: list[Catapult], history: Sequence[dict[str, Any]]) -> None:
    """Fill each event's ``info`` from a run's metrics rows (``ntk/...`` keys, ``lr``):

    ``lr`` (at the trigger), ``top_share`` (``L_top/L`` at the probe measurement with the largest
    loss inside the event), ``top_share_max`` (the largest ``L_top/L`` measured inside it: at the
    very peak of a violent catapult the kernel itself is distorted), ``top_share_by_s`` (the share
    at that measurement for s = 1..k),
    ``L_rest_before`` / ``L_rest_after`` and their change, ``lambda_max_before`` / ``_after``
    (at or before the start, at or after the end), the critical level ``n·c/η`` and the
    ``eta_crit`` before and after.
    """
    by_step = {r["step"]: r for r in history}
    ntk_rows = [r for r in history if r.get("ntk/lambda")]
    for ev in events:
        info = ev.info
        trig = by_step.get(ev.trigger) or by_step.get(ev.start) or {}
        info["lr"] = trig.get("lr")
        if not ntk_rows:
            continue
        inside = [r for r in ntk_rows if ev.start <= r["step"] <= ev.end and _finite(r["ntk/L"])]
        at_peak = (max(inside, key=lambda r: r["ntk/L"]) if inside else
                   _nearest(ntk_rows, ev.peak))
        before = _nearest(ntk_rows, ev.start, before=True)
        after = _nearest(ntk_rows, ev.end, before=False) if ev.recovered else None
        shares = [r["ntk/L_top"] / r["ntk/L"] for r in inside
                  if _finite(r.get("ntk/L_top")) and r["ntk/L"] > 0]
        if shares:
            info["top_share_max"] = max(shares)
        if at_peak and at_peak.get("ntk/L_top_by_s") and _finite(at_peak.get("ntk/L")) \
                and at_peak["ntk/L"] > 0:
            info["top_share_by_s"] = [v / at_peak["ntk/L"] for v in at_peak["ntk/L_top_by_s"]]
        if at_peak and _finite(at_peak.get("ntk/L")) and at_peak["ntk/L"] > 0:
            info["top_share"] = at_peak["ntk/L_top"] / at_peak["ntk/L"]
            info["top_share_step"] = at_peak["step"]
            info["s"] = at_peak.get("ntk/s")
        if before:
            info["lambda_max_before"] = before["ntk/lambda"][0]
            info["eta_crit_before"] = before["ntk/eta_crit"]
            info["critical_level"] = before["ntk/critical_level"]
            info["L_rest_before"] = before["ntk/L_rest"]
        if after:
            info["lambda_max_after"] = after["ntk/lambda"][0]
            info["eta_crit_after"] = after["ntk/eta_crit"]
            info["L_rest_after"] = after["ntk/L_rest"]
        if before and after:
            info["L_rest_change"] = after["ntk/L_rest"] - before["ntk/L_rest"]
        if "ntk/batch_eta_crit" in trig:
            info["batch_eta_crit"] = trig["ntk/batch_eta_crit"]


def early_warning(flags: Sequence[int], events: Sequence[Catapult], *, window: int,
                  n_steps: int) -> dict[str, Any]:
    """Precision and recall of "flag at step t, then an event starts within t..t+window".

    ``flags`` are the steps whose batch had ``η > η_crit(B)``. Precision: the share of flags
    followed by an event start within the window; recall: the share of events whose start has a
    flag within ``window`` steps before it (or at it). Both are None when undefined.
    """
    starts = [ev.start for ev in events]
    flags = sorted(flags)
    hits = sum(any(t <= s <= t + window for s in starts) for t in flags)
    found = sum(any(s - window <= t <= s for t in flags) for s in starts)
    return {
        "window": window,
        "flags": len(flags),
        "events": len(starts),
        "steps": n_steps,
        "flag_rate": len(flags) / n_steps if n_steps else None,
        "precision": hits / len(flags) if flags else None,
        "recall": found / len(starts) if starts else None,
    }
