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

:func:`lr_raises` lists the run's learning-rate raises, each with the critical rate measured
before it and the catapult that followed; :func:`raise_warnings` says which raises could not
catapult (at or below their critical rate); :func:`label_causes` labels each catapult ``lr
raise``, ``initial lr`` or ``spontaneous`` (no learning-rate change explains it: the edge of
stability, SGD's batches), so that a claim about raises does not count spontaneous ones.

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

from catapults.detect.api import (
    detect,
    find_catapults,
    find_oscillations,
)
from catapults.detect.attribution import (
    attribute_events,
    early_warning,
)
from catapults.detect.calibration import (
    NULL_MODELS,
    calibrate,
    calibration,
)
from catapults.detect.events import (
    CONFIRM_SHARE,
    DEFAULT_FALSE_POSITIVE_RATE,
    DEFAULT_WINDOW,
    OSCILLATION_RATIO,
    OSCILLATION_RUN,
    OSCILLATION_SHARE,
    Catapult,
    Detection,
    Oscillation,
)
from catapults.detect.raises import CAUSES, RAISE_RATIO, label_causes, lr_raises, raise_warnings

__all__ = [
    "CAUSES",
    "CONFIRM_SHARE",
    "Catapult",
    "DEFAULT_FALSE_POSITIVE_RATE",
    "DEFAULT_WINDOW",
    "Detection",
    "NULL_MODELS",
    "OSCILLATION_RATIO",
    "OSCILLATION_RUN",
    "OSCILLATION_SHARE",
    "Oscillation",
    "RAISE_RATIO",
    "attribute_events",
    "calibrate",
    "calibration",
    "detect",
    "early_warning",
    "find_catapults",
    "find_oscillations",
    "label_causes",
    "lr_raises",
    "raise_warnings",
]
