"""Labelled loss curves for the catapult detector: seeded generators with ground truth.

Used by tests/test_detect.py and by the benchmark ``benchmarks/bench_detector.py`` (which also
scores the old detector). Every curve is built in log-loss: a trend, noise (iid lognormal or
AR(1)-correlated, log-scale ``sigma``) and the labelled events. Classes:

- ``clean``: decaying curves, no or tiny noise, no event;
- ``noise``: noise only, sigma in {0.1, 0.3, 0.5, 0.8}, iid and AR(1), flat and decaying;
- ``oscillation``: period-2 episodes of high/low ratio 2-6 (the edge of stability), no catapult;
- ``slow``: spikes growing 0.02-0.1 per step (log) to 10-100x, on quiet backgrounds;
- ``fast``: spikes of 5-1000x rising in 1-4 steps, on noisy backgrounds (sigma <= 0.3);
- ``pair``: two fast spikes close together, with a deep dip between (two events) or a shallow
  one (one event), as documented in catapults.detect;
- ``diverging``: the loss grows to NaN / inf (one unrecovered event);
- ``real``: loss curves of small runs of the toolkit, labelled by hand
  (tests/data/detector_real_runs.json, written by benchmarks/make_detector_real_runs.py).

A true event is ``(start, peak, end)``: ``start`` the last step before the growth, ``end`` the
first step back at the baseline; an oscillation is ``(start, end)``. A detected event matches a
true one if their ``[start, end]`` overlap and the starts differ by at most the case's
``tolerance`` (one to one, in order).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter

REAL_RUNS = Path(__file__).parent / "data" / "detector_real_runs.json"
NOISE_SIGMAS = (0.1, 0.3, 0.5, 0.8)


@dataclass
class Case:
    name: str
    cls: str
    losses: np.ndarray
    catapults: list[tuple[int, int, int]] = field(default_factory=list)
    oscillations: list[tuple[int, int]] = field(default_factory=list)
    tolerance: int = 3
    params: dict[str, Any] = field(default_factory=dict)


# ---- building blocks (log-loss) ----------------------------------------------------------------
def trend(n: int, kind: str = "decay") -> np.ndarray:
    t = np.arange(n)
    if kind == "flat":
        return np.zeros(n)
    if kind == "decay":  # fast at first, then a plateau: log(0.05 + 0.95 exp(-t / 300))
        return np.log(0.05 + 0.95 * np.exp(-t / 300))
    if kind == "linear":
        return -0.003 * t
    if kind == "power":
        return -0.8 * np.log1p(t / 20)
    raise ValueError(kind)


def noise(n: int, sigma: float, rng: np.random.Generator, phi: float = 0.0) -> np.ndarray:
    """Gaussian noise in log-loss (lognormal in the loss), marginal sd ``sigma``; AR(1) with
    coefficient ``phi``."""
    e = rng.standard_normal(n)
    if phi:
        e = lfilter([math.sqrt(1 - phi * phi)], [1, -phi], e)
    return sigma * e


def add_spike(z: np.ndarray, start: int, rise: int, height: float, fall: int,
              plateau: int = 0) -> tuple[int, int, int]:
    """Add a spike in log-loss: linear growth (exponential in the loss) over ``rise`` steps
    from ``start`` to ``log(height)``, ``plateau`` steps at the top, back over ``fall`` steps.
    Returns the true ``(start, peak, end)``."""
    h = math.log(height)
    peak = start + rise
    bump = np.concatenate([np.linspace(0, h, rise + 1), np.full(plateau, h),
                           np.linspace(h, 0, fall + 1)[1:]])
    z[start:start + bump.size] += bump
    return start, peak, start + bump.size - 1


def add_oscillation(z: np.ndarray, start: int, end: int, ratio: float,
                    ramp: int = 0) -> tuple[int, int]:
    """Period-2 oscillation of high/low ``ratio`` about the trend on steps start..end, its
    amplitude growing linearly over the first ``ramp`` steps."""
    t = np.arange(start, end + 1)
    amp = np.full(t.size, math.log(ratio) / 2)
    if ramp:
        amp[:ramp] *= np.linspace(0.2, 1, ramp)
    z[start:end + 1] += amp * np.where(t % 2 == 0, 1.0, -1.0)
    return start, end


def _loss(z: np.ndarray) -> np.ndarray:
    return np.exp(z)


# ---- the classes --------------------------------------------------------------------------------
def clean_cases() -> list[Case]:
    out = []
    for kind in ("decay", "linear", "power"):
        for sigma in (0.0, 0.01):
            z = trend(1500, kind) + noise(1500, sigma, np.random.default_rng(7))
            out.append(Case(f"clean/{kind}/s{sigma}", "clean", _loss(z),
                            params={"sigma": sigma, "trend": kind}))
    return out


def noise_cases(seeds: range = range(10), n: int = 2000,
                sigmas: tuple[float, ...] = NOISE_SIGMAS) -> list[Case]:
    out = []
    for sigma in sigmas:
        for phi in (0.0, 0.7):
            for k, kind in enumerate(("flat", "decay")):
                for seed in seeds:
                    rng = np.random.default_rng([11, seed, int(100 * sigma), int(10 * phi), k])
                    z = trend(n, kind) + noise(n, sigma, rng, phi)
                    out.append(Case(f"noise/s{sigma}/phi{phi}/{kind}/{seed}", "noise", _loss(z),
                                    params={"sigma": sigma, "phi": phi, "trend": kind,
                                            "seed": seed}))
    return out


def oscillation_cases(seeds: range = range(3)) -> list[Case]:
    out = []
    for ratio in (2.0, 3.0, 4.0, 6.0):
        for sigma in (0.0, 0.02, 0.05):
            for seed in seeds:
                rng = np.random.default_rng([13, seed, int(10 * ratio), int(100 * sigma)])
                n = 1000
                z = trend(n, "linear") * 0.3 + noise(n, sigma, rng)
                a = int(rng.integers(150, 300))
                b = a + int(rng.integers(100, 300))
                osc = [add_oscillation(z, a, b, ratio, ramp=10 * (seed % 2))]
                if seed == 2:  # a second, shorter episode
                    osc.append(add_oscillation(z, b + 150, b + 230, ratio))
                out.append(Case(f"osc/r{ratio}/s{sigma}/{seed}", "oscillation", _loss(z),
                                oscillations=osc,
                                params={"ratio": ratio, "sigma": sigma, "seed": seed}))
    return out


def slow_cases(seeds: range = range(3)) -> list[Case]:
    out = []
    for growth in (0.02, 0.05, 0.1):
        for height in (10.0, 30.0, 100.0):
            for sigma in (0.0, 0.03, 0.1):
                for seed in seeds:
                    rng = np.random.default_rng([17, seed, int(100 * growth), int(height),
                                                 int(100 * sigma)])
                    rise = int(round(math.log(height) / growth))
                    fall = int(rng.choice([max(2, rise // 4), rise, 5]))
                    n = 300 + rise + fall + 200
                    phi = 0.7 if seed == 1 else 0.0
                    z = trend(n, "linear" if seed == 2 else "flat") + noise(n, sigma, rng, phi)
                    ev = add_spike(z, 300, rise, height, fall)
                    tol = 3 + int(math.ceil(2 * sigma / growth))
                    out.append(Case(f"slow/g{growth}/h{height}/s{sigma}/{seed}", "slow",
                                    _loss(z), catapults=[ev], tolerance=tol,
                                    params={"growth": growth, "height": height,
                                            "sigma": sigma, "phi": phi, "seed": seed}))
    return out


def fast_cases(seeds: range = range(3)) -> list[Case]:
    out = []
    for height in (5.0, 10.0, 100.0, 1000.0):
        for sigma in (0.05, 0.1, 0.2, 0.3):
            if height == 5.0 and sigma > 0.2:
                continue  # 5x is 1.6 in log: within reach of sigma = 0.3 noise
            for seed in seeds:
                rng = np.random.default_rng([19, seed, int(height), int(100 * sigma)])
                n = 1200
                phi = 0.7 if seed == 1 else 0.0
                z = trend(n, "decay") + noise(n, sigma, rng, phi)
                evs = []
                for at in (250, 600, 950):
                    rise = int(rng.choice([1, 2, 4]))
                    fall = int(rng.choice([1, 3, 10]))
                    evs.append(add_spike(z, at + int(rng.integers(0, 50)), rise, height, fall))
                out.append(Case(f"fast/h{height}/s{sigma}/{seed}", "fast", _loss(z),
                                catapults=evs,
                                params={"height": height, "sigma": sigma, "phi": phi,
                                        "seed": seed}))
    return out


def pair_cases(seeds: range = range(3)) -> list[Case]:
    """Two 30x spikes ``gap`` steps apart. deep: back to the baseline between them (two
    events); shallow: the loss between stays at 10x, above the geometric midpoint sqrt(30)
    (one event)."""
    out = []
    for gap in (6, 12, 25):
        for depth in ("deep", "shallow"):
            for sigma in (0.0, 0.05):
                for seed in seeds:
                    rng = np.random.default_rng([23, seed, gap, int(100 * sigma)])
                    n = 700
                    z = trend(n, "decay") + noise(n, sigma, rng)
                    a = 300 + int(rng.integers(0, 30))
                    h = math.log(30.0)
                    up = np.linspace(0, h, 4)
                    if depth == "deep":
                        first = add_spike(z, a, 3, 30.0, 3)
                        second = add_spike(z, first[2] + gap - 6, 3, 30.0, 3)
                        evs = [first, second]
                    else:
                        low = math.log(10.0)
                        mid = np.full(gap, low)
                        bump = np.concatenate([up, np.linspace(h, low, 3)[1:], mid,
                                               np.linspace(low, h, 3)[1:],
                                               np.linspace(h, 0, 4)[1:]])
                        z[a:a + bump.size] += bump
                        evs = [(a, a + 3, a + bump.size - 1)]
                    out.append(Case(f"pair/{depth}/gap{gap}/s{sigma}/{seed}", "pair",
                                    _loss(z), catapults=evs,
                                    params={"gap": gap, "depth": depth, "sigma": sigma,
                                            "seed": seed}))
    return out


def diverging_cases() -> list[Case]:
    out = []
    for k, (sigma, growth, bad) in enumerate([(0.0, 0.5, math.nan), (0.05, 0.3, math.inf),
                                              (0.1, 0.1, math.nan), (0.0, 0.0, math.nan)]):
        rng = np.random.default_rng([29, k])
        n = 600
        z = trend(n, "decay") + noise(n, sigma, rng)
        start = 400
        if growth:
            z[start:] += growth * np.arange(n - start)
            cut = start + int(math.log(1e6) / growth)
        else:  # NaN out of the blue
            cut = start
        losses = _loss(z)[:cut + 1]
        losses[cut] = bad
        out.append(Case(f"diverging/{k}", "diverging", losses, catapults=[(start, cut, cut)],
                        tolerance=3 + int(math.ceil(2 * sigma / growth)) if growth else 1,
                        params={"sigma": sigma, "growth": growth}))
    return out


def real_cases(path: Path = REAL_RUNS) -> list[Case]:
    """The hand-labelled loss curves of small runs of the toolkit (tests/data)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    out = []
    for run in data["runs"]:
        losses = np.array([math.nan if v is None else v for v in run["losses"]])
        out.append(Case(f"real/{run['name']}", "real", losses,
                        catapults=[tuple(e) for e in run["catapults"]],
                        oscillations=[tuple(e) for e in run.get("oscillations", [])],
                        tolerance=run.get("tolerance", 3),
                        params={"series": run["series"], "note": run.get("note", "")}))
    return out


def all_cases() -> list[Case]:
    return (clean_cases() + noise_cases() + oscillation_cases() + slow_cases() + fast_cases()
            + pair_cases() + diverging_cases() + real_cases())


# ---- scoring ------------------------------------------------------------------------------------
def match(found: list[tuple[int, int]], true: list[tuple[int, int]],
          tolerance: int) -> int:
    """Number of one-to-one matches (in order) between found and true ``(start, end)``
    intervals: overlapping, starts at most ``tolerance`` apart."""
    used = set()
    hits = 0
    for s, e in found:
        for j, (ts, te) in enumerate(true):
            if j not in used and s <= te and ts <= e and abs(s - ts) <= tolerance:
                used.add(j)
                hits += 1
                break
    return hits


def score_case(case: Case, catapults: list[tuple[int, int]],
               oscillations: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Counts for one case: true / found / matched catapults (and oscillations)."""
    true = [(s, e) for s, _, e in case.catapults]
    out = {"steps": int(case.losses.size), "true": len(true), "found": len(catapults),
           "matched": match(catapults, true, case.tolerance)}
    if oscillations is not None:
        out.update(osc_true=len(case.oscillations), osc_found=len(oscillations),
                   osc_matched=match(oscillations, case.oscillations, 10 ** 9))
    return out
