"""``catapults run CONFIG``: train one run; ``catapults resume RUN``: continue a killed one."""

from __future__ import annotations

from catapults.cli.common import add_overrides
from catapults.config import load_config


def add_parsers(sub) -> None:
    p = sub.add_parser("run", help="train one run from a YAML config")
    p.add_argument("config", help="YAML config file (sections data, model, train, monitor, output)")
    add_overrides(p, "override a field, e.g. --set train.lr=0.5 (repeatable)")
    p.add_argument("--out", help="run directory (overrides output.dir)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    r = sub.add_parser("resume", help="continue a killed or interrupted run from its last "
                       "checkpoint (a run started with output.checkpoint_every)")
    r.add_argument("run", help="run directory")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def cmd_resume(args) -> int:
    from catapults.runs import resume, sigterm_as_interrupt  # imports torch

    with sigterm_as_interrupt():
        result = resume(args.run, progress=False if args.no_progress else None)
    s = result.summary
    print(f"status: {s['status']}  steps: {s['steps']} (resumed at step "
          f"{s['resumed_from'][-1]})  final train loss: {s['final_train_loss']:.4g}  test loss: "
          f"{s['final_test_loss']:.4g}")
    print(f"run directory: {result.dir}")
    return 0


def cmd_run(args) -> int:
    from catapults.runs import run, sigterm_as_interrupt  # imports torch
    from catapults.storage.rundir import check_output_path

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_config(args.config, overrides)
    check_output_path(args.out or cfg.output.dir, "--out" if args.out else "output.dir")
    with sigterm_as_interrupt():  # a scheduler's SIGTERM: an interrupted run, as Ctrl-C
        result = run(cfg, out_dir=args.out, overwrite=args.overwrite or None,
                     progress=False if args.no_progress else None)
    s = result.summary
    print(f"status: {s['status']}  steps: {s['steps']}  final train loss: "
          f"{s['final_train_loss']:.4g}  test loss: {s['final_test_loss']:.4g}"
          + (f"  test error: {s['final_test_error']:.4f}" if s.get("final_test_error") is not None
             else ""))
    for line in ((s.get("monitors") or {}).get("events") or {}).get("warnings") or []:
        print(f"note: {line}")
    print(f"run directory: {result.dir}  (figures in {result.dir / 'figures'})")
    return 0
