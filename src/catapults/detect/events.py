"""What detection finds: catapults, oscillation episodes, and the detector's defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

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
