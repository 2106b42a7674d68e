"""The detector itself: noise scale, triggers, starts and ends of spikes, oscillations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from catapults.detect.events import (
    _OSC_GAP,
    OSCILLATION_RUN,
    Catapult,
)


# ---- the detector: numpy helpers ---------------------------------------------------------------
# numpy is imported where it is used, so that importing this module stays cheap.
def _robust_sd(a: Any) -> float:
    """1.4826 x the median absolute deviation (the sd for Gaussian data); 0 for < 2 values."""

    if a.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(a - np.median(a))))


def _past_min(v: Any, window: int) -> Any:
    """``out[t] = min(v[max(0, t - window):t])`` (inf at t = 0), by a sparse table: O(n log w)."""

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

    return 2.0 * _robust_sd(np.diff(_smooth121(z))) if z.size >= 4 else 0.0


def _alternation_windows(z: Any, run: int) -> tuple[Any, Any]:
    """The alternation ``c`` (0 at the ends) and, for each window of ``run`` consecutive
    ``c[1 + j .. j + run]``, ``m[j]`` = the largest ``theta`` for which all of them have one sign
    and ``|c| >= theta``."""

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

    if a.size < 5:
        return a.copy()
    padded = np.concatenate([a[:1], a[:1], a, a[-1:], a[-1:]])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 5), axis=1)


def _last_calm(v: Any, pos: int, t: int, window: int, base: float, calm: float) -> int:
    """The last step in the calm window before ``t`` where the log-loss, smoothed by a running
    median of 5 (so that one noisy low step does not count), is at most ``base + calm``."""

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
