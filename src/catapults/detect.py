"""Catapult detection in loss curves, calibrated against the run's own noise; oscillations;
attribution to the NTK spectrum and spectral confirmation; early warning.

The detector (:func:`detect`; :func:`find_catapults` returns its catapults, and
:func:`find_oscillations` its oscillation episodes) works on the log-loss ``z_t = log L_t``.
Non-positive losses are read as the smallest positive loss of the series.

1. **Oscillations.** GD at the edge of stability makes the loss alternate up and down every
   step. The alternation ``c_t = (-1)^t (z_t - (z_{t-1} + z_{t+1}) / 2)`` is the log of the
   high/low ratio of a period-2 oscillation. An *oscillation episode* is a stretch where
   ``OSCILLATION_RUN`` (6) or more consecutive ``c_t`` have one sign and ``|c_t| >= theta``,
   ``theta = max(log OSCILLATION_RATIO, q x sigma_f)``; ``sigma_f`` is the noise of the log-loss
   smoothed by ``(1, 2, 1) / 4`` (which removes period 2), episodes closer than 3 steps merge.
   Inside an episode the catapult search sees the smoothed log-loss (the level the loss
   oscillates about), so an oscillation is never a catapult, while a catapult during one still
   is.
2. **Noise.** The spike statistic is the rise over the baseline, ``R_t = z_t - B_t``, where
   ``B_t`` is the lowest log-loss of the last ``window`` calm steps (a one-sided CUSUM on the
   increments of ``z`` with zero drift, over a window). Its median ``m`` and robust spread
   ``sigma = 1.4826 x MAD(R)`` are the run's noise: for lognormal noise of log-scale ``s``
   around a trend, ``sigma ~= s``, and ``m`` is how far the loss level typically lies above
   the lowest calm loss. They are taken in two passes: over every step, then over the calm
   steps only (between the events of the first pass, history restarting after each), so that
   spikes and the raised loss after a catapult do not count as noise.
3. **Bar.** An event *triggers* at the first calm step with ``R_t >= max(m + eta x sigma,
   max(m, 0) + log ratio)``: the calibrated bar, and an absolute minimum height, ``ratio``
   (default 3) x the loss level before it (the lowest calm loss, times ``exp(m)`` on a noisy
   curve), so that curves with tiny noise do not report tiny bumps. ``eta`` (and ``q``) come
   from a Monte-Carlo calibration on noise-only curves (:func:`calibrate`): iid lognormal noise
   around a flat and two decaying trends, and AR(1)-correlated noise with phi 0.5 to 0.95, so
   that each gives at most ``false_positive_rate`` (default 1e-3) false events per step.
   Zero drift was chosen because it makes ``eta`` nearly the same for iid and correlated noise
   (docs/detector.md) and lets slow rises add up.
4. **Start, peak, end.** The *start* is where the growth began, not where the bar was crossed:
   the corner of the best continuous two-piece linear fit of ``z`` (level or trend, then
   exponential growth) around the rise, moved back to the bottom when the curve was still
   falling just before it (a rounded minimum). The *peak* is the largest loss inside the
   event; ``baseline_loss`` the loss level before it (as in the bar), so ``height =
   peak_loss / baseline_loss >= ratio`` (outside oscillation episodes). The event *ends* at
   the first of two consecutive steps back at or below ``max(return_ratio x baseline,
   sqrt(baseline x peak))`` (the peak so far); with the defaults the geometric midpoint is
   always the larger. So two spikes close together are two events if the loss between them
   falls below the geometric midpoint of the baseline and the first peak (for two steps: one
   noisy low step does not split a spike), and one event otherwise; the second is an event of
   its own only if it rises above the bar again over the loss it rose from. After an event
   the calm history restarts at its end.
5. A loss that never comes back gives one event with ``recovered=False`` ending at the last
   step. A NaN or inf loss ends the series: the event in progress (or a new one starting where
   the last rise began) ends there, unrecovered, with ``kind="divergence"``.

Every result carries the calibration report (:attr:`Detection.calibration`): the noise
estimate ``sigma``, the bar (``bar``, log units, and ``bar_ratio``), ``eta``, and the
calibrated false-positive rate per step measured on the noise-only curves.

With the NTK tracked, :func:`attribute_events` also *confirms* each catapult spectrally (the
paper's definition): ``info["confirmed"]`` is True when the spike is carried by the top
eigenspace (``L_top / L >= confirm_share``, default 0.5, at the largest probe loss inside the
event) and ``lambda_max`` is lower after it than before, False when either fails, None when not
measurable. A claim about catapults should use the confirmed count when the NTK is tracked
(``confirmed_count`` in ``events.json``), and the loss-only ``count`` otherwise.

Steps are indices into ``losses``. ``losses`` may be any one-dimensional series of real numbers:
a list or tuple of Python, numpy or 0-d torch numbers (``None`` for divergence), a numpy array of
any integer or float dtype, or a torch tensor of any such dtype on any device; it is read once into
Python floats, so every input form gives the same events.
"""

from __future__ import annotations

import decimal
import functools
import math
import numbers
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from catapults import metrics

DEFAULT_WINDOW = 100
"""Calm steps whose lowest loss is the baseline (was 20: too short for slow spikes)."""
DEFAULT_FALSE_POSITIVE_RATE = 1e-3
"""False events per step that noise alone may give, at most."""
CONFIRM_SHARE = 0.5
"""Spectral confirmation: the least share ``L_top / L`` of the loss in the top eigenspace."""
OSCILLATION_RATIO = 1.2
"""The least high/low ratio of consecutive losses in an oscillation episode."""
OSCILLATION_RUN = 6
"""The least number of consecutive alternating steps in an oscillation episode."""
OSCILLATION_SHARE = 0.1
"""The share of the false-event budget that the calibration gives to oscillation episodes."""
_OSC_GAP = 2


@dataclass
class Catapult:
    """One spike: ``start`` (where the rise began), ``peak``, ``end`` (back near the baseline),
    all step indices; the baseline (the loss level before it: the lowest calm loss, raised by
    the typical rise over it on a noisy curve) and peak losses;
    ``recovered=False`` for divergence or a loss that never came back. ``kind`` is
    ``"catapult"`` or ``"divergence"`` (a NaN/inf loss); ``score`` is the rise of the peak over
    the baseline in units of the noise ``sigma`` beyond its typical value (inf for a curve
    without noise, None for a divergence)."""

    start: int
    peak: int
    end: int
    baseline_loss: float
    peak_loss: float
    recovered: bool
    trigger: int = -1
    info: dict[str, Any] = field(default_factory=dict)
    kind: str = "catapult"
    score: float | None = None

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


@dataclass
class Oscillation:
    """A period-2 oscillation episode: steps ``start`` to ``end`` (inclusive) and its
    ``amplitude``, the median high/low ratio of consecutive losses in it."""

    start: int
    end: int
    amplitude: float
    kind: str = "oscillation"
    period: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Detection:
    """What :func:`detect` found: ``events`` (catapults, divergences and oscillation episodes,
    by start) and the ``calibration`` report (noise ``sigma``, ``bar``, calibrated
    ``false_positive_rate``, ...)."""

    events: list[Catapult | Oscillation]
    calibration: dict[str, Any]

    @property
    def catapults(self) -> list[Catapult]:
        """The spikes: kind ``"catapult"`` and ``"divergence"``."""
        return [e for e in self.events if isinstance(e, Catapult)]

    @property
    def oscillations(self) -> list[Oscillation]:
        return [e for e in self.events if isinstance(e, Oscillation)]


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


def _as_array(losses: Any) -> Any:
    """``losses`` as a float64 numpy array, the values :func:`_as_losses` gives; real numpy
    arrays, tensors and lists of Python floats go straight through (a 100k-step curve in
    milliseconds), everything else element by element."""
    import numpy as np

    if _is_ndarray(losses) and losses.ndim == 1 and losses.dtype.kind in "iuf":
        return losses.astype(np.float64)
    if _is_tensor(losses) and losses.ndim == 1 and (losses.dtype.is_floating_point or str(
            losses.dtype) in ("torch.int8", "torch.uint8", "torch.int16", "torch.int32",
                              "torch.int64")):
        torch = sys.modules["torch"]
        return losses.detach().to("cpu", torch.float64).numpy()
    if type(losses) in (list, tuple) and all(type(v) in (float, np.float64) for v in losses):
        return np.array(losses, dtype=np.float64)
    return np.asarray(_as_losses(losses), dtype=np.float64)


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



# ---- the detector: numpy helpers ---------------------------------------------------------------
# numpy is imported where it is used, so that importing this module stays cheap.
def _robust_sd(a: Any) -> float:
    """1.4826 x the median absolute deviation (the sd for Gaussian data); 0 for < 2 values."""
    import numpy as np

    if a.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(a - np.median(a))))


def _past_min(v: Any, window: int) -> Any:
    """``out[t] = min(v[max(0, t - window):t])`` (inf at t = 0), by a sparse table: O(n log w)."""
    import numpy as np

    n = v.size
    p = np.concatenate([np.full(window, np.inf), v])  # p[t + window] = v[t]
    k = window.bit_length() - 1
    table = p
    for j in range(k):  # table[i] = min(p[i : i + 2^(j+1)])
        s = 1 << j
        table = np.minimum(table[:-s], table[s:])
    span = 1 << k  # the window [t - w, t - 1] is p[t : t + w]: two spans of 2^k cover it
    return np.minimum(table[:n], table[window - span:window - span + n])


def _log_losses(x: Any) -> Any:
    """log of the finite, positive losses; non-positive ones read as the smallest positive."""
    import numpy as np

    pos = x > 0
    floor = x[pos].min() if pos.any() else 1.0
    return np.log(np.where(pos, x, floor))


def _smooth121(z: Any) -> Any:
    """``(z_{t-1} + 2 z_t + z_{t+1}) / 4`` (the ends unchanged): removes period 2 exactly."""
    f = z.copy()
    if z.size >= 3:
        f[1:-1] = 0.25 * (z[:-2] + 2 * z[1:-1] + z[2:])
    return f


def _oscillation_noise(z: Any) -> float:
    """Noise of the log-loss with period 2 removed: for iid noise of sd s the increments of the
    (1, 2, 1)/4-smoothed series have sd s/2."""
    import numpy as np

    return 2.0 * _robust_sd(np.diff(_smooth121(z))) if z.size >= 4 else 0.0


def _alternation_windows(z: Any, run: int) -> tuple[Any, Any]:
    """The alternation ``c`` (0 at the ends) and, for each window of ``run`` consecutive
    ``c[1 + j .. j + run]``, ``m[j]`` = the largest ``theta`` for which all of them have one sign
    and ``|c| >= theta``."""
    import numpy as np

    n = z.size
    c = np.zeros(n)
    if n < run + 2:
        return c, np.zeros(0)
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    c[1:-1] = sign[1:-1] * (z[1:-1] - 0.5 * (z[:-2] + z[2:]))
    w = np.lib.stride_tricks.sliding_window_view(c[1:-1], run)
    return c, np.maximum(w.min(axis=1), -w.max(axis=1))


def _oscillation_episodes(z: Any, theta: float, run: int = OSCILLATION_RUN,
                          gap: int = _OSC_GAP) -> list[tuple[int, int, float]]:
    """``(start, end, amplitude)`` of the period-2 episodes of ``z`` at threshold ``theta``."""
    import numpy as np

    c, m = _alternation_windows(z, run)
    on = np.flatnonzero(m >= theta)
    if on.size == 0:
        return []
    n = z.size
    cover = np.zeros(n + 1)
    np.add.at(cover, on + 1, 1)  # window j covers steps 1 + j .. j + run
    np.add.at(cover, on + run + 1, -1)
    covered = np.cumsum(cover[:n]) > 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], covered.astype(np.int8), [0]])))
    runs = [[a, b - 1] for a, b in zip(edges[::2], edges[1::2])]
    merged = [runs[0]]
    for a, b in runs[1:]:
        if a - merged[-1][1] - 1 <= gap:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return [(int(a), int(b), float(np.exp(np.median(np.abs(c[a:b + 1])))))
            for a, b in merged]


def _first_trigger(v: Any, pos: int, bar: float, window: int) -> int | None:
    """The first step t > pos with ``v[t] - min(v[max(pos, t - window):t]) >= bar``; chunks of
    growing size, so that the work is about the steps looked at."""
    import numpy as np

    n, c0, size = v.size, pos + 1, 256
    while c0 < n:
        c1 = min(n, c0 + size)
        lo = max(pos, c0 - window)
        rise = v[c0:c1] - _past_min(v[lo:c1], window)[c0 - lo:]
        hits = np.flatnonzero(rise >= bar)
        if hits.size:
            return c0 + int(hits[0])
        c0, size = c1, size * 2
    return None


def _event_end(v: Any, t: int, base: float, log_return: float, ends_finite: bool) -> int | None:
    """The first step e > t with ``v[e]`` and ``v[e + 1]`` at or below ``max(base + log_return,
    (base + running peak) / 2)``; the last step counts alone when the series ends finite."""
    import numpy as np

    n, c0, size, peak = v.size, t, 64, -np.inf
    while c0 < n:
        c1 = min(n, c0 + size)
        seg = v[c0:c1]
        run_peak = np.maximum.accumulate(np.maximum(seg, peak))
        below = seg <= np.maximum(base + log_return, 0.5 * (base + run_peak))
        ok = below[:-1] & below[1:]
        if c1 == n and ends_finite:
            ok = np.append(ok, below[-1])
        hits = np.flatnonzero(ok)
        if hits.size:
            return c0 + int(hits[0])
        if c1 == n:
            return None
        peak = run_peak[-2]
        c0, size = c1 - 1, size * 2
    return None


def _hinge_start(v: Any, a: int, b: int, lo: int, hi: int) -> int:
    """The corner ``tau`` in ``[lo, hi]`` of the least-squares continuous two-piece linear fit
    ``v[s] ~ c + d1 min(s - tau, 0) + d2 max(s - tau, 0)`` over ``s`` in ``[a, b]``."""
    import numpy as np

    s = np.arange(a, b + 1, dtype=float)
    y = v[a:b + 1]
    taus = np.arange(lo, hi + 1, dtype=float)
    d = s[None, :] - taus[:, None]
    X = np.stack([np.ones_like(d), np.minimum(d, 0.0), np.maximum(d, 0.0)], axis=-1)
    XtX = np.einsum("tsi,tsj->tij", X, X) + 1e-12 * np.eye(3)
    Xty = np.einsum("tsi,s->ti", X, y)
    beta = np.linalg.solve(XtX, Xty[..., None])[..., 0]
    sse = float(y @ y) - np.einsum("ti,ti->t", beta, Xty)
    return int(taus[int(np.argmin(sse))])


def _running_median5(a: Any) -> Any:
    import numpy as np

    if a.size < 5:
        return a.copy()
    padded = np.concatenate([a[:1], a[:1], a, a[-1:], a[-1:]])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 5), axis=1)


def _last_calm(v: Any, pos: int, t: int, window: int, base: float, calm: float) -> int:
    """The last step in the calm window before ``t`` where the log-loss, smoothed by a running
    median of 5 (so that one noisy low step does not count), is at most ``base + calm``."""
    import numpy as np

    lo = max(pos, t - window)
    smooth = _running_median5(v[lo:min(t + 2, v.size)])[:t - lo]
    calm_steps = np.flatnonzero(smooth <= base + calm)
    return lo + int(calm_steps[-1]) if calm_steps.size else lo + int(np.argmin(v[lo:t]))


def _rise_start(v: Any, pos: int, t: int, peak: int, window: int, base: float,
                calm: float, sigma: float) -> int:
    """Where the rise that triggered at ``t`` began: the corner of a two-piece linear fit of
    the log-loss around the rise (from before the last calm step ``s0`` to as far past the
    trigger as ``s0`` lies before it), searched from well before ``s0``, and moved back to the
    bottom if the curve still fell just before it (:func:`_bottom`); ``s0`` itself when there
    are too few points to fit."""
    s0 = _last_calm(v, pos, t, window, base, calm)
    span = t - s0
    a = max(pos, s0 - max(20, 3 * span))
    b = min(peak, t + max(2, span), v.size - 1)
    first, last = max(a + 1, s0 - max(10, 2 * span)), min(t - 1, b - 1)
    if b - a < 3 or first > last:
        return s0
    return _bottom(v, max(pos, a), _hinge_start(v, a, b, first, last), t, sigma)


def _bottom(v: Any, lo: int, tau: int, t: int, sigma: float) -> int:
    """The corner ``tau`` of a fit, moved back to the bottom of a rounded one: where the loss
    was lowest (running median of the last 3 steps) in the ``min(10, t - tau)`` steps before
    ``tau``, if that lies more than ``2 sigma`` below its value at ``tau`` (a curve that was
    still falling there); else ``tau``."""
    import numpy as np

    a = max(lo, tau - min(10, max(2, t - tau)))
    past = v[max(lo, a - 2):tau + 1]
    if past.size < 3:
        return tau
    med3 = np.median(np.lib.stride_tricks.sliding_window_view(past, 3), axis=1)
    med3 = med3[med3.size - (tau - a + 1):] if med3.size >= tau - a + 1 else med3
    j = int(np.argmin(med3))
    if med3[j] >= med3[-1] - 2 * sigma:
        return tau
    end = tau - (med3.size - 1 - j)  # the last step of that window of 3: its lowest step
    return max(lo, end - 2) + int(np.argmin(v[max(lo, end - 2):end + 1]))


def _spikes(x: Any, v: Any, smoothed: Any, bar: float, *, window: int, log_return: float,
            ends_finite: bool, typical: float, sigma: float
            ) -> tuple[list[Catapult], Catapult | None]:
    """The events of the finite series (``x`` losses, ``v`` the log-loss the search sees,
    ``smoothed`` where it is smoothed) and the one still in progress at its end (or None)."""
    import numpy as np

    calm = _calm_rise(typical, sigma)
    offset = max(typical, 0.0)  # the loss level over the lowest calm loss, on a noisy curve
    events: list[Catapult] = []
    pos = 0
    while True:
        t = _first_trigger(v, pos, bar, window)
        if t is None:
            return events, None
        lo = max(pos, t - window)
        b_idx = lo + int(np.argmin(v[lo:t]))
        base = float(v[b_idx])
        end = _event_end(v, t, base + offset, log_return, ends_finite)
        stop = x.size - 1 if end is None else end
        peak = t + int(np.argmax(x[t:stop + 1]))
        exact = offset == 0 and x[b_idx] > 0 and not smoothed[b_idx]
        ev = Catapult(_rise_start(v, pos, t, peak, window, base, calm, sigma), peak, stop,
                      float(x[b_idx]) if exact else math.exp(base + offset),
                      float(x[peak]), end is not None, trigger=t)
        rise = float(v[peak]) - base - typical
        ev.score = rise / sigma if sigma > 0 else math.inf
        if end is None:
            return events, ev
        events.append(ev)
        pos = end


def _calm_rise(typical: float, sigma: float) -> float:
    """A rise over the baseline that is calm: none, or within one sigma of the typical."""
    return max(0.0, typical + sigma)


def _divergence(x: Any, v: Any, current: Catapult | None, *, window: int, typical: float,
                sigma: float) -> Catapult:
    """The unrecovered event that a NaN/inf loss at step ``x.size`` ends."""
    import numpy as np

    t = x.size
    if current is None:
        lo = max(0, t - window)
        if t == 0:
            current = Catapult(0, 0, 0, math.nan, math.inf, False, trigger=0)
        else:
            b_idx = lo + int(np.argmin(v[lo:t]))
            start = _last_calm(v, 0, t, window, float(v[b_idx]), _calm_rise(typical, sigma))
            current = Catapult(start, t, t, float(x[b_idx]), math.inf, False, trigger=t)
    current.end, current.peak, current.peak_loss = t, t, math.inf
    current.recovered, current.kind, current.score = False, "divergence", None
    return current


def _noise(v: Any, window: int, events: Sequence[Catapult] = ()) -> tuple[float, float]:
    """Median and robust sd of the rise over the baseline on the calm steps: every step when
    no ``events`` are given, else the stretches between them (history restarting at each end,
    as the search sees them)."""
    import numpy as np

    bounds = [0]
    for ev in events:
        bounds += [ev.trigger, ev.end]
    bounds.append(v.size if not events or events[-1].recovered else events[-1].trigger)
    rises = [seg - _past_min(seg, window)
             for seg in (v[a:b] for a, b in zip(bounds[::2], bounds[1::2])) if seg.size > 1]
    rise = np.concatenate(rises) if rises else np.zeros(0)
    rise = rise[np.isfinite(rise)]
    return (float(np.median(rise)) if rise.size else 0.0), _robust_sd(rise)


def _analyse(x: Any, *, eta: float, q: float, window: int, log_ratio: float, log_return: float,
             osc_floor: float, ends_finite: bool, oscillations: bool = True) -> dict[str, Any]:
    """The detector on a finite series of losses ``x``: oscillation episodes, noise, bar and
    spikes (see the module docstring). ``log_ratio`` / ``osc_floor`` are the absolute minimum
    height and oscillation ratio in log units (-inf: none, as in the calibration)."""
    import numpy as np

    z = _log_losses(x)
    v, smoothed = z.copy(), np.zeros(z.size, dtype=bool)
    sigma_f = _oscillation_noise(z)
    theta = max(osc_floor, q * sigma_f)
    episodes = _oscillation_episodes(z, theta) if oscillations and theta > 0 else []
    if episodes:
        f = _smooth121(z)
        for a, b, _ in episodes:
            smoothed[max(a - 1, 0):b + 2] = True
        v[smoothed] = f[smoothed]
    typical, sigma = _noise(v, window)
    spikes: list[Catapult] = []
    current = None
    for final in (False, True):  # the second pass takes the noise from the first's calm steps
        noise_bar = typical + eta * sigma
        bar = max(noise_bar, max(typical, 0.0) + log_ratio)
        if not math.isfinite(bar):  # the calibration asks for the statistics only (eta = inf)
            break
        spikes, current = _spikes(x, v, smoothed, bar, window=window, log_return=log_return,
                                  ends_finite=ends_finite, typical=typical, sigma=sigma)
        if final or (not spikes and current is None):
            break
        typical, sigma = _noise(v, window, [*spikes, *([current] if current else [])])
    return {"spikes": spikes, "current": current, "v": v, "episodes": episodes,
            "sigma": sigma, "typical": typical, "noise_bar": noise_bar, "bar": bar,
            "sigma_f": sigma_f, "theta": theta}


# ---- calibration against noise-only curves -----------------------------------------------------
NULL_MODELS: tuple[tuple[str, float, str], ...] = (
    ("iid, flat", 0.0, "flat"),
    ("iid, linear decay", 0.0, "linear"),
    ("iid, curved decay", 0.0, "curved"),
    ("AR(1) 0.5, flat", 0.5, "flat"),
    ("AR(1) 0.8, flat", 0.8, "flat"),
    ("AR(1) 0.9, flat", 0.9, "flat"),
    ("AR(1) 0.95, curved decay", 0.95, "curved"),
)
"""The noise-only curves of the calibration: (name, AR(1) coefficient, trend). Noise of sd 0.3
in log-loss (the detector is scale-free apart from its absolute minima, which the calibration
leaves out); trends: flat, ``-0.003 t``, ``log(0.1 + 0.9 exp(-t / 300))``."""


def _null_log_losses(phi: float, trend: str, *, series: int, length: int,
                     rng: Any) -> Any:
    """``series`` noise-only log-loss curves: AR(1) noise (marginal sd 0.3) plus a trend."""
    import numpy as np

    e = rng.standard_normal((series, length))
    u = e.copy()
    if phi:
        k = math.sqrt(1 - phi * phi)
        for t in range(1, length):
            u[:, t] = phi * u[:, t - 1] + k * e[:, t]
    t = np.arange(length)
    base = {"flat": np.zeros(length), "linear": -0.003 * t,
            "curved": np.log(0.1 + 0.9 * np.exp(-t / 300))}[trend]
    return base + 0.3 * u


def _up_crossings(u: Any, levels: Any) -> Any:
    """For each level, the number of steps t with ``u[t - 1] < level <= u[t]`` (rows of ``u``
    are separate series; -inf where undefined)."""
    import numpy as np

    prev = np.concatenate([np.full((u.shape[0], 1), np.inf), u[:, :-1]], axis=1)
    up = u > prev
    lo, hi = np.sort(prev[up]), np.sort(u[up])
    return np.searchsorted(lo, levels, side="left") - np.searchsorted(hi, levels, side="left")


def _smallest_level(counts: Any, levels: Any, steps: int, rate: float) -> float:
    """The smallest level whose count per step is at most ``rate`` for every model (row)."""
    import numpy as np

    ok = np.all(counts / steps <= rate, axis=0)
    ok &= np.flip(np.logical_and.accumulate(np.flip(ok)))  # and for every level above it
    if not ok.any():
        raise RuntimeError("calibration: no level on the grid meets the rate")
    return float(levels[int(np.argmax(ok))])


def _null_rates(curves: list[Any], *, eta: float, q: float, window: int
                ) -> dict[str, dict[str, float]]:
    """False events per step of the detector (no absolute minima) on each null model."""
    import numpy as np

    models = {}
    for (name, _, _), z in zip(NULL_MODELS, curves):
        n_cat = n_osc = 0
        for row in z:
            a = _analyse(np.exp(row), eta=eta, q=q, window=window, log_ratio=-np.inf,
                         log_return=0.0, osc_floor=-np.inf, ends_finite=True)
            n_cat += len(a["spikes"]) + (a["current"] is not None)
            n_osc += len(a["episodes"])
        models[name] = {"catapults": n_cat / z.size, "oscillations": n_osc / z.size}
    return models


def calibrate(window: int = DEFAULT_WINDOW,
              false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE, *,
              series: int | None = None, length: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Monte-Carlo calibration of the bars on :data:`NULL_MODELS` (deterministic: seeded).

    The rate is shared between the two kinds of event, so that noise alone gives at most
    ``false_positive_rate`` false events per step of either kind:

    1. ``q``: the smallest oscillation threshold (in units of ``sigma_f``) whose episodes come
       up at most ``OSCILLATION_SHARE`` (a tenth) of ``false_positive_rate`` times per step on
       every null model;
    2. ``eta``: with those episodes, the smallest spike bar (in units of ``sigma`` above the
       median rise) crossed upwards at most the rest (nine tenths) of ``false_positive_rate``
       times per step on every null model (each false event begins with an upward crossing, so
       this bounds its rate);
    3. the detector with ``eta`` and ``q`` (and no absolute minimum height) is run on every
       curve (``eta`` goes up by 0.05 until its false catapults per step keep within the
       budget on every model); the measured false events per step are reported per model, and
       the largest is the calibrated ``false_positive_rate``.

    ``series`` curves of ``length`` steps per model (default: enough for about 100 false events
    per model at the target rate). A few seconds at the defaults; :func:`detect` uses shipped
    constants for the default window and rate (``_SHIPPED``) and caches any other in memory.
    """
    import numpy as np

    if series is None:
        series = max(100, math.ceil(100 / (false_positive_rate * length)))
    rng = np.random.default_rng([seed, window])
    curves = [_null_log_losses(phi, trend, series=series, length=length, rng=rng)
              for _, phi, trend in NULL_MODELS]
    steps = series * length
    q_levels = np.round(np.arange(0.5, 12.0, 0.01), 2)
    q_counts = []
    for z in curves:
        u = []
        for row in z:
            sf = _oscillation_noise(row)
            _, m = _alternation_windows(row, OSCILLATION_RUN)
            u.append(m / sf if sf > 0 else np.full(m.size, -np.inf))
        q_counts.append(_up_crossings(np.array(u), q_levels))
    q = _smallest_level(np.array(q_counts), q_levels, steps,
                        OSCILLATION_SHARE * false_positive_rate)
    eta_levels = np.round(np.arange(0.5, 20.0, 0.01), 2)
    eta_counts = []
    for z in curves:
        u = []
        for row in z:
            a = _analyse(np.exp(row), eta=np.inf, q=q, window=window, log_ratio=-np.inf,
                         log_return=0.0, osc_floor=-np.inf, ends_finite=True)
            rise = a["v"] - _past_min(a["v"], window)
            u.append((rise - a["typical"]) / a["sigma"] if a["sigma"] > 0
                     else np.full(rise.size, -np.inf))
        eta_counts.append(_up_crossings(np.nan_to_num(np.array(u), nan=-np.inf), eta_levels))
    budget = (1 - OSCILLATION_SHARE) * false_positive_rate
    eta = _smallest_level(np.array(eta_counts), eta_levels, steps, budget)
    while True:  # the detector itself (second pass included) must keep within the budget
        models = _null_rates(curves, eta=eta, q=q, window=window)
        if max(m["catapults"] for m in models.values()) <= budget:
            break
        eta = round(eta + 0.05, 2)
    return {"window": window, "target": false_positive_rate, "eta": eta, "q": q,
            "false_positive_rate": max(m["catapults"] for m in models.values()),
            "oscillation_false_positive_rate": max(m["oscillations"] for m in models.values()),
            "models": models, "series": series, "length": length, "seed": seed}


_SHIPPED: dict[tuple[int, float], dict[str, Any]] = {
    (DEFAULT_WINDOW, DEFAULT_FALSE_POSITIVE_RATE): {
        "window": 100, "target": 0.001, "eta": 3.24, "q": 2.09,
        "false_positive_rate": 0.0008, "oscillation_false_positive_rate": 0.0001,
        "models": {
            "iid, flat": {"catapults": 0.00062, "oscillations": 0.0001},
            "iid, linear decay": {"catapults": 0.0008, "oscillations": 2e-05},
            "iid, curved decay": {"catapults": 0.00066, "oscillations": 6e-05},
            "AR(1) 0.5, flat": {"catapults": 0.00052, "oscillations": 0.0},
            "AR(1) 0.8, flat": {"catapults": 0.00038, "oscillations": 0.0},
            "AR(1) 0.9, flat": {"catapults": 0.0004, "oscillations": 0.0},
            "AR(1) 0.95, curved decay": {"catapults": 0.00045, "oscillations": 0.0},
        },
        "series": 100, "length": 1000, "seed": 0,
    },
}
"""``calibrate(window, rate)`` for the defaults, computed once (tests/test_detect.py recomputes
a small version and checks that it agrees)."""


@functools.lru_cache(maxsize=32)
def _calibrated(window: int, false_positive_rate: float) -> dict[str, Any]:
    return calibrate(window, false_positive_rate)


def calibration(window: int = DEFAULT_WINDOW,
                false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE) -> dict[str, Any]:
    """The calibration :func:`detect` uses: shipped for the defaults, else computed by
    :func:`calibrate` (seconds) and kept in memory."""
    shipped = _SHIPPED.get((window, false_positive_rate))
    return shipped if shipped is not None else _calibrated(window, false_positive_rate)


# ---- the public functions ----------------------------------------------------------------------
def _check_parameters(ratio: float, window: Any, return_ratio: float,
                      false_positive_rate: float) -> int:
    if not (math.isfinite(ratio) and ratio > 1):  # NaN fails every comparison
        raise ValueError(f"ratio must be a finite number > 1, got {ratio}")
    if not 1 <= return_ratio < ratio:
        raise ValueError(f"return_ratio must be >= 1 and < ratio ({ratio}), got {return_ratio}")
    if _is_bool(window) or not isinstance(window, numbers.Integral) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if not 1e-4 <= false_positive_rate <= 0.1:
        raise ValueError("false_positive_rate must be in [1e-4, 0.1] (false events per step), "
                         f"got {false_positive_rate}")
    return int(window)


def detect(
    losses: Iterable[Any],
    *,
    ratio: float = 3.0,
    window: int = DEFAULT_WINDOW,
    return_ratio: float = 1.5,
    false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
    oscillations: bool = True,
    min_height: float | None = None,
) -> Detection:
    """Catapults, divergence and oscillation episodes of a loss series, with the calibration.

    Args:
        losses: one loss per step (full-batch GD losses or noisy SGD losses); ``None``, NaN or
            inf mark divergence. A one-dimensional list, tuple, numpy array or torch tensor (any
            device) of real numbers; bools and non-numbers are a TypeError naming the element,
            a series of more than one dimension is a ValueError.
        ratio: the absolute minimum height: a spike must rise to at least ``ratio`` x its
            baseline, whatever the noise (default 3).
        window: number of recent calm steps whose lowest loss is the baseline (default 100).
        return_ratio: a spike has ended when the loss is back at or below this multiple of the
            baseline, or half-way down from the peak in log scale (default 1.5; < ratio).
        false_positive_rate: false events per step that noise alone may give (default 1e-3;
            1e-4 to 0.1; values other than the default are calibrated on first use, seconds).
        oscillations: find period-2 oscillation episodes and keep them out of the catapults
            (default True; False searches the raw log-loss, where an oscillation then counts
            as noise).
        min_height: the newer name of ``ratio`` (it wins when given).

    Returns:
        A :class:`Detection`: ``events`` by start, ``catapults``, ``oscillations`` and the
        ``calibration`` report (``sigma``, ``bar``, ``bar_ratio``, ``eta``,
        ``false_positive_rate``, ...); the algorithm is in the module docstring.
    """
    import numpy as np

    if min_height is not None:
        ratio = min_height
    window = _check_parameters(ratio, window, return_ratio, false_positive_rate)
    x = _as_array(losses)
    cal = calibration(window, false_positive_rate)
    bad = ~np.isfinite(x)
    n = int(np.argmax(bad)) if bad.any() else x.size
    a = _analyse(x[:n], eta=cal["eta"], q=cal["q"], window=window, log_ratio=math.log(ratio),
                 log_return=math.log(return_ratio), osc_floor=math.log(OSCILLATION_RATIO),
                 ends_finite=n == x.size, oscillations=oscillations)
    spikes: list[Catapult] = list(a["spikes"])
    if n < x.size:
        spikes.append(_divergence(x[:n], a["v"], a["current"], window=window,
                                  typical=a["typical"], sigma=a["sigma"]))
    elif a["current"] is not None:
        spikes.append(a["current"])
    osc = [Oscillation(s, e, amp) for s, e, amp in a["episodes"]]
    events: list[Catapult | Oscillation] = sorted([*spikes, *osc], key=lambda e: e.start)
    report = {
        "method": "rise of log L over its lowest calm value in the window, bar calibrated on "
                  "noise-only curves (catapults.detect)",
        "steps": int(x.size), "window": window, "sigma": a["sigma"],
        "median_rise": a["typical"], "eta": cal["eta"], "noise_bar": a["noise_bar"],
        "min_height": ratio, "bar": a["bar"], "bar_ratio": math.exp(a["bar"]),
        "target_false_positive_rate": false_positive_rate,
        "false_positive_rate": cal["false_positive_rate"],
        "sigma_oscillation": a["sigma_f"], "oscillation_threshold": a["theta"],
        "oscillation_q": cal["q"],
    }
    return Detection(events, report)


def find_catapults(
    losses: Iterable[Any],
    *,
    ratio: float = 3.0,
    window: int = DEFAULT_WINDOW,
    return_ratio: float = 1.5,
    false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
    oscillations: bool = True,
    min_height: float | None = None,
) -> list[Catapult]:
    """The catapults (and a divergence) of a loss series: :func:`detect` without the
    oscillation episodes and the calibration report (same arguments; ``ratio`` is the
    absolute minimum height, ``window`` the baseline's calm steps).

    Before the noise-calibrated detector, ``ratio`` (3) over the lowest of the last ``window``
    (20) losses was the whole trigger: lognormal noise of log-sd 0.3 gave ~28 false events
    per 1000 steps. Now the bar is the larger of that minimum height and a bar calibrated on
    the run's own noise, so noise alone gives at most ``false_positive_rate`` per step."""
    return detect(losses, ratio=ratio, window=window, return_ratio=return_ratio,
                  false_positive_rate=false_positive_rate, oscillations=oscillations,
                  min_height=min_height).catapults


def find_oscillations(losses: Iterable[Any], **kwargs: Any) -> list[Oscillation]:
    """The period-2 oscillation episodes of a loss series (:func:`detect`'s arguments)."""
    return detect(losses, **kwargs).oscillations



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


def _confirmed(ev: Catapult, confirm_share: float) -> bool | None:
    """The paper's definition of a catapult, checked on the NTK measurements in ``ev.info``:
    carried by the top eigenspace at its peak and lambda_max lower after it than before."""
    info = ev.info
    share, before, after = (info.get("top_share"), info.get("lambda_max_before"),
                            info.get("lambda_max_after"))
    if ev.kind != "catapult" or not all(_finite(v) for v in (share, before, after)):
        return None
    return bool(share >= confirm_share and after < before)


def attribute_events(events: list[Catapult], history: Sequence[dict[str, Any]], *,
                     confirm_share: float = CONFIRM_SHARE) -> None:
    """Fill each event's ``info`` from a run's metrics rows (``ntk/...`` keys, ``lr``):

    ``lr`` (at the trigger), ``top_share`` (``L_top/L`` at the probe measurement with the largest
    loss inside the event), ``top_share_max`` (the largest ``L_top/L`` measured inside it: at the
    very peak of a violent catapult the kernel itself is distorted), ``top_share_by_s`` (the share
    at that measurement for s = 1..k),
    ``L_rest_before`` / ``L_rest_after`` and their change, ``lambda_max_before`` / ``_after``
    (at or before the start, at or after the end), the critical level ``n·c/η`` and the
    ``eta_crit`` before and after; and ``confirmed``: True when ``top_share >= confirm_share``
    (default 0.5) and ``lambda_max_after < lambda_max_before`` (the paper's definition of a
    catapult), False when either fails, None when they cannot be measured (no NTK rows, a
    divergence, no measurement after the end). Oscillation episodes are skipped.

    The values read (``step``, ``lr``, ``ntk/...``) may be Python, numpy or torch numbers and
    arrays; ``info`` gets Python numbers and lists (so ``events.json`` can be written).
    """
    history = [_plain_row(r) for r in history]
    by_step = {r["step"]: r for r in history}
    ntk_rows = [r for r in history if r.get(metrics.NTK_LAMBDA)]
    for ev in events:
        if not isinstance(ev, Catapult):
            continue
        info = ev.info
        trig = by_step.get(ev.trigger) or by_step.get(ev.start) or {}
        info["lr"] = trig.get("lr")
        info["confirmed"] = None
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
        info["confirmed"] = _confirmed(ev, confirm_share)


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
