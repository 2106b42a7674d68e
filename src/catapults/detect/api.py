"""The public detection functions: ``detect``, ``find_catapults``, ``find_oscillations``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from catapults.detect.algorithm import (
    _analyse,
    _divergence,
)
from catapults.detect.calibration import (
    calibration,
)
from catapults.detect.events import (
    DEFAULT_FALSE_POSITIVE_RATE,
    DEFAULT_WINDOW,
    OSCILLATION_RATIO,
    Catapult,
    Detection,
    Oscillation,
)
from catapults.detect.reading import (
    _as_array,
    _is_bool,
)


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
