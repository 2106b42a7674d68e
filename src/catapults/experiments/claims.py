"""The claims of `catapults reproduce`: their thresholds, how each is checked, and the
``claims.json`` document (SPEC.md section 2).

The thresholds are the constants in ``THRESHOLDS``, fixed in code before the results were looked
at; a failing claim is reported as failing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Fixed before looking at results. Spearman thresholds: a clear monotone trend (|rho| >= 0.6 over
# >= 3 points); shares: most of the spike (>= 0.8 for a clean GD catapult, >= 0.5 for noisy SGD).
THRESHOLDS: dict[str, tuple[str, float]] = {
    "gd-single/one-catapult": ("==", 1.0),
    "gd-single/top-share": (">=", 0.8),
    "gd-single/rest-growth": ("<=", 2.0),
    "gd-single/lr-below-new-critical": ("<=", 1.0),
    "gd-multi/catapults-follow-raises": (">=", 0.9),
    "gd-multi/alignment-vs-catapults": (">=", 0.6),
    "gd-multi/test-loss-vs-catapults": ("<=", -0.6),
    "sgd-spikes/top-share": (">=", 0.5),
    "sgd-spikes/top-share-s5": (">=", 0.5),
    "sgd-spikes/warning-recall": (">=", 0.5),
    "sgd-batch-size/catapults-vs-batch": ("<=", -0.6),
    "sgd-batch-size/alignment-vs-batch": ("<=", -0.6),
    "sgd-batch-size/test-loss-vs-batch": (">=", 0.6),
}


@dataclass
class Claim:
    """One checked claim: ``statistic`` computed from the runs compared with ``threshold``."""

    id: str
    claim: str
    statistic: str
    value: float | None
    comparison: str
    threshold: float
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)


def make_claim(cid: str, claim: str, statistic: str, value: float | None,
               **detail: Any) -> Claim:
    key = cid.split(":", 1)[-1]  # "real-digits:gd-multi/x" uses the threshold of "gd-multi/x"
    op, thr = THRESHOLDS[key]
    ok = value is not None and math.isfinite(value) and (
        value >= thr if op == ">=" else value <= thr if op == "<=" else abs(value - thr) < 1e-9)
    return Claim(cid, claim, statistic, value, op, thr, bool(ok), detail)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation (None when undefined: fewer than 3 points or a constant)."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None
             and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return None
    # imported here: scipy.stats takes ~1.7 s, and the CLI imports this package for every command
    from scipy.stats import spearmanr

    xs, ys = zip(*pairs)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


@dataclass
class ExperimentResult:
    name: str
    claims: list[Claim]
    figures: list[Path]
    tables: list[Path]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def format_claims(claims: list[Claim]) -> str:
    head = ["claim", "id", "value", "threshold", "result"]
    rows = [[c.claim, c.id, "-" if c.value is None else f"{c.value:.4g}",
             f"{c.comparison} {c.threshold:g}", "PASS" if c.passed else "FAIL"] for c in claims]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _claims_doc(results: list[ExperimentResult], size: str) -> dict[str, Any]:
    return {
        "size": size,
        "thresholds_fixed_in": "catapults.experiments.claims.THRESHOLDS",
        "experiments": {r.name: {"seconds": r.seconds, "notes": r.notes,
                                 "figures": [str(p) for p in r.figures],
                                 "tables": [str(p) for p in r.tables]} for r in results},
        "claims": [asdict(c) for c in (c for r in results for c in r.claims)],
        "passed": sum(c.passed for r in results for c in r.claims),
        "total": sum(len(r.claims) for r in results),
    }
