"""``catapults reproduce EXPERIMENT``: the paper's experiments and a check of each claim.

Exit code 0 when the experiments ran (a claim that fails is a result); with ``--strict``, 1 when
any claim failed.
"""

from __future__ import annotations

import sys

from catapults.cli.common import positive_int

EXPERIMENT_NAMES = ("gd-single", "gd-multi", "sgd-spikes", "sgd-batch-size", "real", "beyond",
                    "stability", "architectures")
"""The names of catapults.experiments.EXPERIMENTS, spelled here so that ``--help`` does not
import torch (a test checks that the two lists agree)."""


def add_parsers(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce the paper's experiments and check its claims")
    p.add_argument("experiment", choices=[*EXPERIMENT_NAMES, "all"])
    p.add_argument("--quick", action="store_true",
                   help="smaller settings: 'all' in under 15 minutes on 2 CPU cores")
    p.add_argument("--size", choices=["tiny", "quick", "full"],
                   help="explicit size (overrides --quick; 'tiny' is for tests)")
    p.add_argument("--out", default="reproduce", help="output directory (default: reproduce)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--resume", action="store_true",
                   help="reuse what a killed or earlier run of the same size finished under "
                   "--out (architectures: per architecture, parameterisation and data set); "
                   "the other experiments run in full")
    p.add_argument("--strict", action="store_true",
                   help="exit with code 1 when any claim fails (default: 0 once the "
                   "experiments ran)")


def cmd_reproduce(args) -> int:
    from catapults.experiments import reproduce
    from catapults.storage.rundir import check_output_path

    check_output_path(args.out, "--out")
    size = args.size or ("quick" if args.quick else "full")
    results = reproduce(args.experiment, out=args.out, size=size, threads=args.threads,
                        resume=args.resume)
    if not results:
        return 1
    # a claim `not run` (all runs diverged, too few seeds, a data set absent) is neither
    # passed nor failed: --strict fails only on claims decided against
    failed = [c for r in results for c in r.claims if c.status == "fail"]
    if args.strict and failed:
        total = sum(len(r.claims) for r in results)
        print(f"catapults: {len(failed)} of {total} claims failed (--strict): "
              + ", ".join(c.id for c in failed), file=sys.stderr)
        return 1
    return 0
