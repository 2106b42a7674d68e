"""Catapult detector benchmark: precision and recall per class of labelled loss curves, for the
old detector (ratio 3 over the lowest of the last 20 losses) and the noise-calibrated one;
false events per 1000 steps on noise-only curves; speed on a 100k-step curve.

    PYTHONPATH=src:tests python benchmarks/bench_detector.py [--quick] [--markdown]

The curves and their ground truth come from tests/detector_cases.py (seeded generators, and
the hand-labelled real runs in tests/data/detector_real_runs.json). Writes
``$BENCH_OUT/bench_detector.json`` (``-quick`` with ``--quick``) when BENCH_OUT is set; with
``--markdown`` prints the tables of docs/detector.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import detector_cases as dc  # noqa: E402

from catapults.detect import calibration, detect  # noqa: E402

CLASSES = ["clean", "noise", "oscillation", "slow", "fast", "pair", "diverging", "real"]


def old_find_catapults(losses, ratio=3.0, window=20, return_ratio=1.5):
    """The detector before the noise calibration (catapults.detect at commit ad0a860), as
    ``(start, peak, end)`` tuples: an event when the loss reaches ``ratio`` x the lowest of the
    last ``window`` calm losses."""
    events, calm, cur = [], [], None
    for t, loss in enumerate(losses):
        if not math.isfinite(loss):
            if cur is None:
                recent = calm[-window:]
                cur = [min(recent, key=lambda sv: sv[1])[0] if recent else t, t, t,
                       min((v for _, v in recent), default=math.nan), math.inf]
            cur[1] = cur[2] = t
            events.append(cur)
            return [tuple(e[:3]) for e in events]
        if cur is not None:
            if loss > cur[4]:
                cur[1], cur[4] = t, loss
            if loss <= max(return_ratio * cur[3], math.sqrt(cur[3] * cur[4])):
                cur[2] = t
                events.append(cur)
                cur, calm = None, [(t, loss)]
            continue
        recent = calm[-window:]
        if recent:
            base = min(v for _, v in recent)
            if base > 0 and loss >= ratio * base:
                cur = [min(recent, key=lambda sv: sv[1])[0], t, t, base, loss]
                continue
        calm.append((t, loss))
    if cur is not None:
        cur[2] = len(losses) - 1
        events.append(cur)
    return [tuple(e[:3]) for e in events]


def score(cases):
    """Totals per class and detector, and per noise level for the noise-only curves."""
    by_class = defaultdict(lambda: defaultdict(int))
    by_noise = defaultdict(lambda: defaultdict(int))
    for case in cases:
        found = detect(case.losses)
        new = dc.score_case(case, [(e.start, e.end) for e in found.catapults],
                            [(e.start, e.end) for e in found.oscillations])
        old = dc.score_case(case, [(s, e) for s, _, e in
                                   old_find_catapults([float(v) for v in case.losses])])
        for prefix, counts in (("new_", new), ("old_", old)):
            for k, v in counts.items():
                by_class[case.cls][prefix + k] += v
                if case.cls == "noise":
                    key = (case.params["sigma"], case.params["phi"])
                    by_noise[key][prefix + k] += v
        by_class[case.cls]["cases"] += 1
    return by_class, by_noise


def _ratio(a, b):
    return a / b if b else None


def summarise(by_class, by_noise):
    classes = {}
    for cls in CLASSES:
        c = by_class.get(cls)
        if not c:
            continue
        row = {"cases": c["cases"], "steps": c["new_steps"], "true": c["new_true"]}
        for d in ("old", "new"):
            row[d] = {"found": c[f"{d}_found"],
                      "precision": _ratio(c[f"{d}_matched"], c[f"{d}_found"]),
                      "recall": _ratio(c[f"{d}_matched"], c[f"{d}_true"]),
                      "false_per_1000": 1000 * (c[f"{d}_found"] - c[f"{d}_matched"])
                      / c[f"{d}_steps"]}
        row["new"]["oscillations"] = {"true": c["new_osc_true"], "found": c["new_osc_found"],
                                      "matched": c["new_osc_matched"]}
        classes[cls] = row
    noise = [{"sigma": s, "phi": p, "steps": c["new_steps"],
              "old_false_per_1000": 1000 * c["old_found"] / c["old_steps"],
              "new_false_per_1000": 1000 * c["new_found"] / c["new_steps"],
              "new_false_oscillations_per_1000": 1000 * c["new_osc_found"] / c["new_steps"]}
             for (s, p), c in sorted(by_noise.items())]
    return classes, noise


def speed(n=100_000):
    rng = np.random.default_rng(0)
    x = np.exp(0.3 * rng.standard_normal(n) - 1e-5 * np.arange(n))
    detect(x[:1000])
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        detect(x)
        best = min(best, time.perf_counter() - t0)
    return best


def _f(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def markdown(classes, noise, seconds):
    lines = ["| class | curves | true events | old: found | old: precision | old: recall "
             "| new: found | new: precision | new: recall "
             "| new: oscillations found (matched) / true |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cls, r in classes.items():
        o, n = r["old"], r["new"]
        osc = n["oscillations"]
        lines.append(f"| {cls} | {r['cases']} | {r['true']} | {o['found']} | "
                     f"{_f(o['precision'])} | {_f(o['recall'])} | {n['found']} | "
                     f"{_f(n['precision'])} | {_f(n['recall'])} | "
                     f"{osc['found']} ({osc['matched']}) / {osc['true']} |")
    lines += ["", "| noise sigma | AR(1) phi | steps | old: false events / 1000 steps "
              "| new: false catapults / 1000 | new: false oscillations / 1000 |",
              "|---|---|---|---|---|---|"]
    for r in noise:
        lines.append(f"| {r['sigma']} | {r['phi']} | {r['steps']} | "
                     f"{r['old_false_per_1000']:.1f} | {r['new_false_per_1000']:.2f} | "
                     f"{r['new_false_oscillations_per_1000']:.2f} |")
    lines += ["", f"Detection of a 100k-step curve: {seconds * 1000:.0f} ms."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds")
    ap.add_argument("--markdown", action="store_true", help="print the tables of the docs")
    args = ap.parse_args()
    seeds = range(3) if args.quick else range(10)
    cases = (dc.clean_cases() + dc.noise_cases(seeds=seeds) + dc.oscillation_cases()
             + dc.slow_cases() + dc.fast_cases() + dc.pair_cases() + dc.diverging_cases()
             + dc.real_cases())
    t0 = time.perf_counter()
    classes, noise = summarise(*score(cases))
    seconds = speed()
    result = {"classes": classes, "noise": noise, "detect_100k_s": seconds,
              "calibration": calibration(), "wall_s": time.perf_counter() - t0}
    print(markdown(classes, noise, seconds) if args.markdown else json.dumps(result, indent=1))
    out = os.environ.get("BENCH_OUT")
    if out:
        path = Path(out) / f"bench_detector{'-quick' if args.quick else ''}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
