"""The statistics behind the claims of `catapults reproduce`: per-seed values, their bootstrap
95% interval, paired effect sizes against a control, rank correlations that need enough levels,
and a pass / fail / not-run decision taken on the interval, never on a point value.

Conventions (docs/conventions.md, "Claims"):

- A claim's *statistic* is computed once per seed (one independent repetition: data, init and
  batch order all drawn from that seed), giving ``per_seed``; its *value* is their mean.
- The *interval* is the percentile bootstrap 95% interval of the mean over seeds (resampling
  seeds with replacement, ``N_BOOT`` resamples, a fixed generator so a rerun gives the same
  interval). With few seeds it is wide, as it should be.
- A claim ``statistic >= threshold`` *passes* when the whole interval is at or above the
  threshold (``<=``: at or below; ``>`` and ``<``: strictly, as for a paired gain that must
  not be zero); otherwise it *fails*. ``==`` passes when every resample gives
  the threshold (all seeds agree).
- A claim is *not run* (with its reason) when fewer than ``MIN_SEEDS`` seeds gave a finite value
  (runs diverged, the seed list had one entry, a data set is absent): neither pass nor fail.
- A rank correlation needs at least ``MIN_LEVELS`` distinct levels: a random order reaches
  ``rho >= 0.6`` (the claimed direction) with probability 0.21 over 4 points, 0.175 over 5 and
  0.12 over 6 (enumerated in tests/test_stats.py); a single seed's correlation is therefore weak
  evidence, and the claim is decided on the interval of the mean over seeds, where chance
  agreement of 3 seeds at 5 levels has probability about 0.175³ ≈ 0.005.
- A *paired effect* compares a treatment with its named control run on the same seed:
  ``per_seed = treatment - control``; its value is the mean difference and ``d_z`` (mean / sd of
  the differences) is reported beside it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

N_BOOT = 4000
LEVEL = 0.95
MIN_SEEDS = 2
MIN_LEVELS = 5
BOOT_SEED = 20230607  # the paper's arXiv month; any fixed value would do


def finite(values: Sequence[float | None]) -> list[float]:
    """The finite numbers of ``values`` (None, nan and inf dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def bootstrap_interval(values: Sequence[float], *, level: float = LEVEL, n_boot: int = N_BOOT,
                       seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (at least one value)."""
    if not values:
        raise ValueError("bootstrap_interval: no values")
    vals = list(values)
    if len(set(vals)) == 1:
        return vals[0], vals[0]
    rng = random.Random(seed)
    n = len(vals)
    means = sorted(mean([vals[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo_i = int(math.floor((1 - level) / 2 * n_boot))
    hi_i = int(math.ceil((1 + level) / 2 * n_boot)) - 1
    return means[lo_i], means[min(hi_i, n_boot - 1)]


@dataclass
class Decision:
    """A claim's outcome: ``status`` is ``pass``, ``fail`` or ``not run``."""

    status: str
    value: float | None
    interval: tuple[float, float] | None
    n: int
    reason: str | None = None


def decide(per_seed: Sequence[float | None], comparison: str, threshold: float, *,
           min_seeds: int = MIN_SEEDS) -> Decision:
    """Decide a claim from its per-seed values (see the module docstring)."""
    vals = finite(per_seed)
    if len(vals) < min_seeds:
        return Decision("not run", mean(vals) if vals else None, None, len(vals),
                        f"{len(vals)} of {len(per_seed)} seed(s) gave a finite value; at least "
                        f"{min_seeds} are needed for an interval")
    lo, hi = bootstrap_interval(vals)
    ok = passes(lo, hi, comparison, threshold)
    return Decision("pass" if ok else "fail", mean(vals), (lo, hi), len(vals))


def passes(lo: float, hi: float, comparison: str, threshold: float) -> bool:
    """Whether the interval ``[lo, hi]`` lies wholly on the claimed side of ``threshold``."""
    if comparison == ">=":
        return lo >= threshold
    if comparison == ">":
        return lo > threshold
    if comparison == "<=":
        return hi <= threshold
    if comparison == "<":
        return hi < threshold
    if comparison == "==":
        return abs(lo - threshold) < 1e-9 and abs(hi - threshold) < 1e-9
    raise ValueError(f"comparison {comparison!r}")


def spearman(x: Sequence[float | None], y: Sequence[float | None], *,
             min_levels: int = MIN_LEVELS) -> float | None:
    """Spearman's rank correlation of the pairs where both are finite (average ranks for
    ties); None when there are fewer than ``min_levels`` distinct x levels or a side is
    constant."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None
             and math.isfinite(float(a)) and math.isfinite(float(b))]
    if len({a for a, _ in pairs}) < min_levels or len({b for _, b in pairs}) < 2:
        return None
    rx, ry = _ranks([a for a, _ in pairs]), _ranks([b for _, b in pairs])
    mx, my = mean(rx), mean(ry)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = math.fsum((a - mx) ** 2 for a in rx)
    syy = math.fsum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def paired_differences(treatment: Sequence[float | None],
                       control: Sequence[float | None]) -> list[float | None]:
    """``treatment - control`` per seed (None where either is missing or not finite)."""
    out: list[float | None] = []
    for a, b in zip(treatment, control, strict=True):
        ok = (a is not None and b is not None and math.isfinite(float(a))
              and math.isfinite(float(b)))
        out.append(float(a) - float(b) if ok else None)
    return out


def effect_size(differences: Sequence[float | None]) -> float | None:
    """Cohen's ``d_z`` of paired differences: their mean over their standard deviation (None
    with fewer than 2 values; ±inf when all differences are equal and nonzero)."""
    vals = finite(differences)
    if len(vals) < 2:
        return None
    m = mean(vals)
    sd = math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    if sd == 0:
        return 0.0 if m == 0 else math.copysign(math.inf, m)
    return m / sd


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney, ties count 1/2);
    None without both classes."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    ranks = _ranks([*pos, *neg])
    r_pos = math.fsum(ranks[: len(pos)])
    return (r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def decide_resampled(groups: Sequence[object], statistic, comparison: str, threshold: float,
                     *, min_seeds: int = MIN_SEEDS, n_boot: int = N_BOOT,
                     seed: int = BOOT_SEED) -> Decision:
    """Decide a claim whose statistic pools the seeds (e.g. a regression within batch sizes):
    ``statistic(list_of_groups) -> float | None`` on all ``groups`` (one per seed) gives the
    value, the cluster bootstrap (resampling whole seeds) its percentile interval. Resamples
    whose statistic is undefined are dropped; fewer than half defined is ``not run``."""
    value = statistic(list(groups))
    if len(groups) < min_seeds or value is None or not math.isfinite(value):
        return Decision("not run", value, None, len(groups),
                        f"{len(groups)} seed(s), statistic {value}: at least {min_seeds} seeds "
                        "and a defined statistic are needed")
    rng = random.Random(seed)
    n = len(groups)
    boots = []
    for _ in range(n_boot):
        v = statistic([groups[rng.randrange(n)] for _ in range(n)])
        if v is not None and math.isfinite(v):
            boots.append(v)
    if len(boots) < n_boot / 2:
        return Decision("not run", value, None, n, f"the statistic is undefined in "
                        f"{n_boot - len(boots)} of {n_boot} bootstrap resamples")
    boots.sort()
    m = len(boots)
    lo = boots[int(math.floor((1 - LEVEL) / 2 * m))]
    hi = boots[min(int(math.ceil((1 + LEVEL) / 2 * m)) - 1, m - 1)]
    return Decision("pass" if passes(lo, hi, comparison, threshold) else "fail", value,
                    (lo, hi), n)


def within_slope(groups: Sequence[Sequence[tuple[object, float, float]]]) -> float | None:
    """Least-squares slope of y on x within levels: ``groups`` are seeds, each a list of
    ``(level, x, y)``; x and y are centred per level over all seeds given (a fixed effect per
    level), then pooled. None when x does not vary within any level."""
    by: dict[object, list[tuple[float, float]]] = {}
    for g in groups:
        for level, x, y in g:
            by.setdefault(level, []).append((float(x), float(y)))
    sxy = sxx = 0.0
    for pts in by.values():
        mx, my = mean([p[0] for p in pts]), mean([p[1] for p in pts])
        sxy += math.fsum((x - mx) * (y - my) for x, y in pts)
        sxx += math.fsum((x - mx) ** 2 for x, _ in pts)
    return None if sxx == 0 else sxy / sxx
