"""``catapults sweep`` and ``catapults sweep-report``: the command line of :mod:`catapults.sweeps`.

(:mod:`catapults.sweeps` imports torch: it is imported inside the commands, so that building the
parser and ``--help`` stay light.)
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from catapults.cli.common import add_overrides, positive_int
from catapults.config import ConfigError


def add_parsers(subparsers) -> None:
    """Add ``sweep`` and ``sweep-report`` to the CLI's argparse subparsers."""
    p = subparsers.add_parser(
        "sweep", help="run a sweep (base config x grid x seeds); re-running resumes it")
    p.add_argument("sweep", help="sweep YAML file (base/base_config, grid, trials, seeds, "
                   "metrics)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="parallel trials (local: worker processes, default: the number of "
                   "cores; 1 runs trials in this process; ray: most tasks in flight)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads per trial (default: cores // workers for local, 1 for ray)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="'local' process pool (default) or 'ray' tasks")
    p.add_argument("--address", default=None,
                   help="ray: address of an existing cluster (default: start a local instance)")
    p.add_argument("--out", default=None,
                   help="sweep directory (default: the sweep file's `out`, else "
                   "runs/sweeps/<name>)")
    add_overrides(p, "override a field of the base config (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and list the trials and their status; run nothing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")

    r = subparsers.add_parser(
        "sweep-report", help="aggregate a sweep directory: CSV table and figures")
    r.add_argument("dir", help="sweep directory")
    r.add_argument("--metric", dest="metrics", action="append", default=None, metavar="KEY",
                   help="summary metric to aggregate (dotted, repeatable; default: the sweep's)")
    r.add_argument("--include-diverged", action="store_true",
                   help="also aggregate diverged trials (default: completed trials only)")
    r.add_argument("--no-figures", action="store_true", help="write the CSV only")


def cmd_sweep(args) -> int:
    """``catapults sweep``: 0 when every trial completed or diverged, 1 when some failed."""
    from catapults.storage.rundir import check_output_path
    from catapults.sweeps import (
        check_trials,
        count_statuses,
        cpu_count,
        format_report,
        load_sweep,
        read_index,
        read_trial_status,
        run_sweep,
        sweep_report,
    )

    if args.address and args.backend != "ray":
        raise ConfigError("--address: only with --backend ray")
    if args.backend == "local":
        workers = args.workers or cpu_count()
        threads = args.threads or max(1, cpu_count() // workers)
    else:
        workers, threads = args.workers, args.threads or 1
    sweep = load_sweep(args.sweep, args.overrides, threads=threads)
    if args.dry_run:
        out = Path(args.out) if args.out else sweep.default_dir()
        if args.backend == "local":
            check_trials(sweep)
        for t in sweep.trials:
            status, _ = read_trial_status(out / "trials" / t.id)
            print(f"{t.id}  {status}  {t.label()}")
        print(f"{len(sweep.trials)} trials, sweep directory {out}")
        return 0

    def terminate(signum, frame):  # a job scheduler's SIGTERM stops the sweep like Ctrl-C
        raise KeyboardInterrupt

    out = Path(args.out) if args.out else sweep.default_dir()
    check_output_path(out, "--out" if args.out else f"{args.sweep}: out")
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        res = run_sweep(sweep, out, workers=workers, threads=threads, backend=args.backend,
                        address=args.address, progress=not args.no_progress, report=False)
    except KeyboardInterrupt:
        if (out / "index.jsonl").is_file():
            counts = count_statuses(read_index(out))
            done = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            print(f"sweep stopped: {done}; index {out / 'index.csv'}. Run the same command "
                  "again to resume (finished trials are kept).", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    c = res.counts
    failed = len(res.rows) - c.get("completed", 0) - c.get("diverged", 0)
    print(f"{len(res.rows)} trials: {c.get('completed', 0)} completed, "
          f"{c.get('diverged', 0)} diverged, {failed} failed or unfinished "
          f"({res.skipped} already done, {res.ran} run now)")
    print(f"sweep directory: {res.dir}  (index: {res.dir / 'index.csv'})")
    if not args.no_report:
        rep = sweep_report(res.dir)
        print(format_report(rep))
        print(f"report: {rep.csv}" + (f"  figures: {rep.csv.parent}" if rep.figures else ""))
    return 1 if failed else 0


def cmd_sweep_report(args) -> int:
    """``catapults sweep-report DIR``."""
    from catapults.sweeps import format_report, sweep_report

    include = ("completed", "diverged") if args.include_diverged else ("completed",)
    if any(not m.strip() for m in args.metrics or []):
        raise ConfigError("--metric: empty name (a dotted key of summary.json, e.g. "
                          "final_test_loss)")
    rep = sweep_report(args.dir, metrics=args.metrics, include=include,
                       figures=not args.no_figures)
    print(format_report(rep))
    print(f"report: {rep.csv}" + (f"  ({len(rep.figures)} figures in {rep.csv.parent})"
                                   if rep.figures else ""))
    return 0
