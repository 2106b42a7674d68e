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

Steps are indices into ``losses``. ``losses`` may be any one-dimensional series of real numbers:
a list or tuple of Python, numpy or 0-d torch numbers (``None`` for divergence), a numpy array of
any integer or float dtype, or a torch tensor of any such dtype on any device; it is read once into
Python floats, so every input form gives the same events.
"""

from __future__ import annotations

import decimal
import math
import numbers
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from catapults import metrics


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


# ---- reading numbers: Python, numpy and torch all give Python floats ---------------------------
# numpy and torch are looked up, not imported: an array or a tensor exists only if its library was
# imported, and importing this module stays cheap.
def _is_tensor(v: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(v, torch.Tensor)


def _is_ndarray(v: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(v, np.ndarray)


def _is_bool(v: Any) -> bool:
    np = sys.modules.get("numpy")
    return isinstance(v, bool) or (np is not None and isinstance(v, np.bool_))


def _scalar(v: Any) -> float:
    """One loss as a Python float: ``None`` -> NaN; a real number (Python, numpy, ``Decimal``, a
    0-d numpy array or a 0-d torch tensor on any device) -> its value (beyond the float range:
    +-inf). TypeError for a bool or a non-number, ValueError for an array or a sequence (the
    message reads after the element's name)."""
    if v is None:
        return math.nan
    if _is_tensor(v) or _is_ndarray(v):
        if v.ndim:
            raise ValueError(f"has shape {tuple(v.shape)}")
        v = v.item() if _is_tensor(v) else v[()]  # a Python number / a numpy scalar
    if _is_bool(v):
        raise TypeError(f"is a bool ({v!r}), not a loss")
    if isinstance(v, (numbers.Real, decimal.Decimal)):
        try:
            return float(v)
        except OverflowError:  # an integer or fraction beyond the float range
            return math.inf if v > 0 else -math.inf
    if isinstance(v, (list, tuple)):
        raise ValueError(f"is a {type(v).__name__}")
    raise TypeError(f"is not a real number: {v!r} ({type(v).__name__})")


def _as_losses(losses: Any) -> list[float]:
    """``losses`` (see :func:`find_catapults`) as a list of Python floats, NaN for ``None``."""
    if isinstance(losses, (str, bytes)):
        raise TypeError("losses must be a sequence of numbers, got a string")
    if _is_tensor(losses) or _is_ndarray(losses):
        if losses.ndim != 1:
            raise ValueError(f"losses must be one-dimensional, got shape {tuple(losses.shape)}")
        if _is_tensor(losses):  # Python numbers; bool and complex dtypes are rejected below
            losses = losses.detach().cpu().tolist()
        elif losses.dtype.kind in "iuf":
            losses = losses.tolist()
        # other numpy dtypes go element by element: bools, strings, dates are rejected by type
    elif not isinstance(losses, Iterable):
        raise TypeError(f"losses must be a sequence of numbers, got {type(losses).__name__}")
    out = []
    for i, v in enumerate(losses):
        try:
            out.append(_scalar(v))
        except TypeError as err:
            raise TypeError(f"losses[{i}] {err}") from None
        except ValueError as err:
            raise ValueError(f"losses must be one-dimensional, but losses[{i}] {err}") from None
    return out


def _plain(v: Any) -> Any:
    """numpy / torch numbers and arrays as Python numbers and lists (tensors moved to the CPU),
    inside lists and tuples too; anything else unchanged."""
    if v is None or type(v) in (int, float, str):
        return v
    if _is_tensor(v):
        return v.detach().cpu().tolist()
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, (np.ndarray, np.generic)):
        return v.tolist()
    if type(v) in (list, tuple):
        return type(v)(_plain(x) for x in v)
    return v


def _finite(v: Any) -> bool:
    """True for a finite real number (Python, numpy or 0-d torch); False for anything else."""
    try:
        return math.isfinite(_scalar(v))
    except (TypeError, ValueError):
        return False


def find_catapults(
    losses: Iterable[Any],
    *,
    ratio: float = 3.0,
    window: int = 20,
    return_ratio: float = 1.5,
) -> list[Catapult]:
    """Find catapults (spikes that rise to ``ratio`` x the recent baseline) in a loss series.

    Args:
        losses: one loss per step (full-batch GD losses or noisy SGD losses); ``None``, NaN or
            inf mark divergence. A one-dimensional list, tuple, numpy array or torch tensor (any
            device) of real numbers; bools and non-numbers are a TypeError naming the element,
            a series of more than one dimension is a ValueError.
        ratio: how far above the baseline a spike must rise (default 3).
        window: number of recent calm steps that define the baseline (default 20).
        return_ratio: a spike has ended when the loss is back at or below this multiple of the
            baseline, or half-way down from the peak in log scale (default 1.5; < ratio).

    Returns:
        The events in order; see the module docstring for the exact algorithm.

    A single pass with a small state machine (calm / inside an event), kept in one function so
    the algorithm reads top to bottom as the module docstring states it.
    """
    if not (math.isfinite(ratio) and ratio > 1):  # NaN fails every comparison
        raise ValueError(f"ratio must be a finite number > 1, got {ratio}")
    if not 1 <= return_ratio < ratio:
        raise ValueError(f"return_ratio must be >= 1 and < ratio ({ratio}), got {return_ratio}")
    if window < 1:
        raise ValueError("window must be >= 1")
    losses = _as_losses(losses)
    events: list[Catapult] = []
    calm: list[tuple[int, float]] = []  # (step, loss) outside events
    current: Catapult | None = None
    for t, loss in enumerate(losses):
        if not math.isfinite(loss):
            if current is None:
                recent = calm[-window:]
                base = min((v for _, v in recent), default=math.nan)
                start = min(recent, key=lambda sv: sv[1])[0] if recent else t
                current = Catapult(start, t, t, base, math.inf, False, trigger=t)
            current.end, current.peak, current.peak_loss = t, t, math.inf
            current.recovered = False
            events.append(current)
            return events
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


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with the values attribute_events reads (step, lr, ntk/...) as Python
    numbers and lists."""
    return {k: _plain(v) if k in ("step", "lr") or str(k).startswith("ntk/") else v
            for k, v in row.items()}


def attribute_events(events: list[Catapult], history: Sequence[dict[str, Any]]) -> None:
    """Fill each event's ``info`` from a run's metrics rows (``ntk/...`` keys, ``lr``):

    ``lr`` (at the trigger), ``top_share`` (``L_top/L`` at the probe measurement with the largest
    loss inside the event), ``top_share_max`` (the largest ``L_top/L`` measured inside it: at the
    very peak of a violent catapult the kernel itself is distorted), ``top_share_by_s`` (the share
    at that measurement for s = 1..k),
    ``L_rest_before`` / ``L_rest_after`` and their change, ``lambda_max_before`` / ``_after``
    (at or before the start, at or after the end), the critical level ``n·c/η`` and the
    ``eta_crit`` before and after.

    The values read (``step``, ``lr``, ``ntk/...``) may be Python, numpy or torch numbers and
    arrays; ``info`` gets Python numbers and lists (so ``events.json`` can be written).
    """
    history = [_plain_row(r) for r in history]
    by_step = {r["step"]: r for r in history}
    ntk_rows = [r for r in history if r.get(metrics.NTK_LAMBDA)]
    for ev in events:
        info = ev.info
        trig = by_step.get(ev.trigger) or by_step.get(ev.start) or {}
        info["lr"] = trig.get("lr")
        if not ntk_rows:
            continue
        inside = [r for r in ntk_rows
                  if ev.start <= r["step"] <= ev.end and _finite(r[metrics.NTK_L])]
        at_peak = (max(inside, key=lambda r: r[metrics.NTK_L]) if inside else
                   _nearest(ntk_rows, ev.peak))
        before = _nearest(ntk_rows, ev.start, before=True)
        after = _nearest(ntk_rows, ev.end, before=False) if ev.recovered else None
        shares = [r[metrics.NTK_L_TOP] / r[metrics.NTK_L] for r in inside
                  if _finite(r.get(metrics.NTK_L_TOP)) and r[metrics.NTK_L] > 0]
        if shares:
            info["top_share_max"] = max(shares)
        if at_peak and at_peak.get(metrics.NTK_L_TOP_BY_S) and _finite(at_peak.get(metrics.NTK_L)) \
                and at_peak[metrics.NTK_L] > 0:
            info["top_share_by_s"] = [v / at_peak[metrics.NTK_L]
                                      for v in at_peak[metrics.NTK_L_TOP_BY_S]]
        if at_peak and _finite(at_peak.get(metrics.NTK_L)) and at_peak[metrics.NTK_L] > 0:
            info["top_share"] = at_peak[metrics.NTK_L_TOP] / at_peak[metrics.NTK_L]
            info["top_share_step"] = at_peak["step"]
            info["s"] = at_peak.get(metrics.NTK_S)
        if before:
            info["lambda_max_before"] = before[metrics.NTK_LAMBDA][0]
            info["eta_crit_before"] = before[metrics.NTK_ETA_CRIT]
            info["critical_level"] = before[metrics.NTK_CRITICAL_LEVEL]
            info["L_rest_before"] = before[metrics.NTK_L_REST]
        if after:
            info["lambda_max_after"] = after[metrics.NTK_LAMBDA][0]
            info["eta_crit_after"] = after[metrics.NTK_ETA_CRIT]
            info["L_rest_after"] = after[metrics.NTK_L_REST]
        if before and after:
            info["L_rest_change"] = after[metrics.NTK_L_REST] - before[metrics.NTK_L_REST]
        if metrics.NTK_BATCH_ETA_CRIT in trig:
            info["batch_eta_crit"] = trig[metrics.NTK_BATCH_ETA_CRIT]


def _step(v: Any, what: str) -> int | float:
    """A step number (Python, numpy or 0-d torch) as a Python int or float."""
    v = _plain(v)
    if _is_bool(v) or not isinstance(v, (int, float)):
        raise TypeError(f"{what} must be a step number, got {v!r} ({type(v).__name__})")
    return v


def _steps(flags: Any) -> list[int | float]:
    """A one-dimensional series of step numbers (see :func:`early_warning`) as a Python list."""
    if _is_tensor(flags) or _is_ndarray(flags):
        if flags.ndim != 1:
            raise ValueError(f"flags must be one-dimensional, got shape {tuple(flags.shape)}")
    elif isinstance(flags, (str, bytes)) or not isinstance(flags, Iterable):
        raise TypeError(f"flags must be a sequence of step numbers, got {type(flags).__name__}")
    return [_step(v, f"flags[{i}]") for i, v in enumerate(_plain(flags))]


def early_warning(flags: Iterable[Any], events: Sequence[Catapult], *, window: int,
                  n_steps: int) -> dict[str, Any]:
    """Precision and recall of "flag at step t, then an event starts within t..t+window".

    ``flags`` are the steps whose batch had ``η > η_crit(B)``. Precision: the share of flags
    followed by an event start within the window; recall: the share of events whose start has a
    flag within ``window`` steps before it (or at it). Both are None when undefined.

    ``flags`` may be a list or tuple of Python, numpy or 0-d torch numbers, a one-dimensional
    numpy array or a torch tensor (any device); a bool or a non-number is a TypeError.
    """
    starts = [_step(ev.start, "an event start") for ev in events]
    flags = sorted(_steps(flags))
    window, n_steps = _step(window, "window"), _step(n_steps, "n_steps")
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
