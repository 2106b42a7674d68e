"""Calibration of the detector's bar against noise-only curves (seeded Monte Carlo)."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from catapults.detect.algorithm import (
    _alternation_windows,
    _analyse,
    _oscillation_noise,
    _past_min,
)
from catapults.detect.events import (
    DEFAULT_FALSE_POSITIVE_RATE,
    DEFAULT_WINDOW,
    OSCILLATION_RUN,
    OSCILLATION_SHARE,
)

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

    prev = np.concatenate([np.full((u.shape[0], 1), np.inf), u[:, :-1]], axis=1)
    up = u > prev
    lo, hi = np.sort(prev[up]), np.sort(u[up])
    return np.searchsorted(lo, levels, side="left") - np.searchsorted(hi, levels, side="left")


def _smallest_level(counts: Any, levels: Any, steps: int, rate: float) -> float:
    """The smallest level whose count per step is at most ``rate`` for every model (row)."""

    ok = np.all(counts / steps <= rate, axis=0)
    ok &= np.flip(np.logical_and.accumulate(np.flip(ok)))  # and for every level above it
    if not ok.any():
        raise RuntimeError("calibration: no level on the grid meets the rate")
    return float(levels[int(np.argmax(ok))])


def _null_rates(curves: list[Any], *, eta: float, q: float, window: int
                ) -> dict[str, dict[str, float]]:
    """False events per step of the detector (no absolute minima) on each null model."""

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
