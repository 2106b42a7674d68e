"""The ``catapults`` command line: a thin layer over the Python API.

Exit codes: 0 success (a diverged run is a result, not an error), 1 a run that failed,
2 bad input (config, arguments, data files: one message naming the field or file).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catapults.config import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"catapults: error: {message}\n")


# ---- checks of arguments and output paths -----------------------------------------------------
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in its message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def spike_ratio(text: str) -> float:
    """argparse type: a finite number > 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 1):
        raise argparse.ArgumentTypeError(f"must be a finite number > 1, got {text}")
    return value


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="train one run from a YAML config")
    p.add_argument("config", help="YAML config file (sections data, model, train, monitor, output)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.lr=0.5 (repeatable)")
    p.add_argument("--out", help="run directory (overrides output.dir)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _cmd_run(args) -> int:
    from catapults.config import load_config
    from catapults.runs import run
    from catapults.storage.rundir import check_output_path

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_config(args.config, overrides)
    check_output_path(args.out or cfg.output.dir, "--out" if args.out else "output.dir")
    result = run(cfg, out_dir=args.out, overwrite=args.overwrite or None,
                 progress=False if args.no_progress else None)
    s = result.summary
    print(f"status: {s['status']}  steps: {s['steps']}  final train loss: "
          f"{s['final_train_loss']:.4g}  test loss: {s['final_test_loss']:.4g}"
          + (f"  test error: {s['final_test_error']:.4f}" if s.get("final_test_error") is not None
             else ""))
    print(f"run directory: {result.dir}  (figures in {result.dir / 'figures'})")
    return 0


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="show or validate configs")
    csub = p.add_subparsers(dest="config_cmd", required=True, parser_class=_Parser)
    show = csub.add_parser("show", help="print the full default config, every field documented "
                           "(or a file's resolved config)")
    show.add_argument("config", nargs="?", help="a config file to resolve (default: defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    val = csub.add_parser("validate", help="check a config as `run` would (fields, target, "
                          "data files, batch size, monitors, device) without training; exit 2 "
                          "naming the bad field")
    val.add_argument("config")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _cmd_config(args) -> int:
    import yaml

    from catapults.config import describe_defaults, load_config

    if args.config_cmd == "show":
        if args.config is None and not args.overrides:
            sys.stdout.write(describe_defaults())
        else:
            cfg = load_config(args.config, args.overrides)
            sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from catapults.runs import check_config

    check_config(load_config(args.config, args.overrides))  # data, target, model, monitors too
    print(f"{args.config}: ok")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="print a run's catapults (events) as a table")
    p.add_argument("run", help="run directory")
    p.add_argument("--figure", metavar="PNG",
                   help="also write the loss curve with the events (a .png file)")
    p.add_argument("--ratio", type=spike_ratio, default=None,
                   help="re-detect with this minimum spike height (> 1, x the loss level before "
                   "the spike) instead of reading events.json")


def _fmt(v, spec=".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def format_events_table(events: list[dict]) -> str:
    """A plain-text table of events (dicts as in events.json)."""
    head = ["#", "start", "peak", "end", "lr", "baseline", "peak loss", "x", "L_top/L", "max",
            "dL_rest", "lmax before", "lmax after", "crit level", "recovered", "confirmed"]
    rows = []
    for i, e in enumerate(events, 1):
        info = e.get("info", {})
        rows.append([str(i), str(e["start"]), str(e["peak"]), str(e["end"]), _fmt(info.get("lr")),
                     _fmt(e["baseline_loss"]), _fmt(e["peak_loss"]), _fmt(e.get("height"), ".1f"),
                     _fmt(info.get("top_share"), ".2f"), _fmt(info.get("top_share_max"), ".2f"),
                     _fmt(info.get("L_rest_change"), ".2g"),
                     _fmt(info.get("lambda_max_before")), _fmt(info.get("lambda_max_after")),
                     _fmt(info.get("critical_level")), "yes" if e["recovered"] else "NO",
                     {True: "yes", False: "no"}.get(info.get("confirmed"), "-")])
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h)
              for k, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_calibration(cal: dict | None, oscillations: int | None = None) -> str | None:
    """One line about the detector's calibration (the ``calibration`` of events.json)."""
    if not isinstance(cal, dict) or not _is_num(cal.get("sigma")):
        return None
    fpr = cal.get("false_positive_rate")
    line = (f"detector: noise sigma {_fmt(cal.get('sigma'))} (log-loss), bar "
            f"{_fmt(cal.get('bar_ratio'), '.2f')}x over the baseline, calibrated false events "
            f"{_fmt(1000 * fpr if _is_num(fpr) and fpr is not None else None, '.2f')} per 1000 "
            "steps of noise")
    if oscillations:
        line += f"; {oscillations} oscillation episode(s)"
    return line


def _is_num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _check_events(data: dict[str, Any], path: Path) -> tuple[list[dict], dict | None]:
    """The events and early warning of an ``events.json``, checked for the fields we print."""
    events, warn = data.get("events"), data.get("early_warning")
    if not isinstance(events, list):
        raise ConfigError(f"{path}: 'events' must be a list of events")
    for i, e in enumerate(events):
        if not (isinstance(e, dict)
                and all(isinstance(e.get(k), int) for k in ("start", "peak", "end"))
                and all(k in e and _is_num(e[k]) for k in ("baseline_loss", "peak_loss"))
                and isinstance(e.get("recovered"), bool)
                and isinstance(e.get("info", {}), dict)):
            raise ConfigError(f"{path}: events[{i}] is not an event (integer start, peak, end; "
                              "baseline_loss, peak_loss numbers; recovered true/false)")
    if warn is not None and not (isinstance(warn, dict)
                                 and all(k in warn for k in ("window", "flags", "precision",
                                                             "recall"))):
        raise ConfigError(f"{path}: early_warning must be null or an object with window, flags, "
                          "precision, recall")
    return events, warn


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    from catapults.storage.rundir import read_metrics

    path = run_dir / "metrics.jsonl"
    try:
        history = read_metrics(run_dir)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a metrics file (binary data)") from None
    if not all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in history):
        raise ConfigError(f"{path}: every line must be a JSON object with an integer 'step'")
    return history


def _check_figure_path(figure: str) -> None:
    path = Path(figure)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--figure: {figure}: must end in .png")
    from catapults.storage.rundir import check_output_path

    check_output_path(path, "--figure", directory=False)
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(len(PNG_MAGIC)) != PNG_MAGIC:
                raise ConfigError(f"--figure: {figure} exists and is not a PNG image; "
                                  "not overwriting it")


def _cmd_inspect(args) -> int:
    from catapults.monitors.events import analyse_history
    from catapults.storage.atomic import read_json_object
    from catapults.storage.rundir import read_summary

    run_dir = Path(args.run)
    if not (run_dir / "metrics.jsonl").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no metrics.jsonl)")
    if args.figure:
        _check_figure_path(args.figure)
    history = _read_history(run_dir)
    path = run_dir / "events.json"
    if path.is_file() and args.ratio is None:
        data = read_json_object(path)
        events, warn = _check_events(data, path)
        cal, n_osc = data.get("calibration"), data.get("oscillations")
        confirmed = data.get("confirmed_count")
    else:
        kw = {}
        if args.ratio is not None:  # the return ratio (default 1.5) must stay below the ratio
            kw = {"ratio": args.ratio, "return_ratio": min(1.5, (1 + args.ratio) / 2)}
        res = analyse_history(history, **kw)
        events, warn = [e.to_dict() for e in res["events"]], res["early_warning"]
        cal, n_osc = res["calibration"], len(res["oscillations"])
        confirmed = res["confirmed_count"]
    summary = {}
    if (run_dir / "summary.json").is_file():
        summary = read_summary(run_dir)
    print(f"run: {run_dir}  status: {summary.get('status', '?')}  steps: "
          f"{summary.get('steps', len(history))}  catapults: {len(events)} "
          f"({sum(e['recovered'] for e in events)} recovered"
          + (f", {confirmed} confirmed spectrally" if isinstance(confirmed, int) else "") + ")")
    line = format_calibration(cal, n_osc if isinstance(n_osc, int) else None)
    if line:
        print(line)
    if events:
        print(format_events_table(events))
    if warn:
        print(f"early warning (eta > eta_crit(B), window {warn['window']}): "
              f"{warn['flags']} flagged steps, precision {_fmt(warn['precision'], '.2f')}, "
              f"recall {_fmt(warn['recall'], '.2f')}")
    if args.figure:
        from catapults.detect import Catapult
        from catapults.plotting import plot_training

        evs = [Catapult(e["start"], e["peak"], e["end"], e["baseline_loss"],
                        e["peak_loss"] if e["peak_loss"] is not None else float("inf"),
                        e["recovered"]) for e in events]
        plot_training(history, args.figure, title=f"{len(events)} catapult(s)", events=evs)
        print(f"figure: {args.figure}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="real data sets under DATA_ROOT")
    dsub = p.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)
    lst = dsub.add_parser("list", help="which data sets are present under DATA_ROOT")
    lst.add_argument("--root", help="data root (default: $CATAPULTS_DATA, else ./data)")


def _cmd_data(args) -> int:
    from catapults.data import data_root
    from catapults.data.discovery import format_dataset_table, list_datasets

    print(f"DATA_ROOT: {data_root(args.root)}  (get MNIST and Fashion-MNIST with `make data`)")
    print(format_dataset_table(list_datasets(args.root)))
    return 0


def _cmd_sweep(args) -> int:
    from catapults.sweeps import cmd_sweep

    return cmd_sweep(args)


def _cmd_sweep_report(args) -> int:
    from catapults.sweeps import cmd_sweep_report

    return cmd_sweep_report(args)


def _add_reproduce(sub) -> None:
    from catapults.experiments import EXPERIMENTS

    p = sub.add_parser("reproduce", help="reproduce the paper's experiments and check its claims")
    p.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    p.add_argument("--quick", action="store_true",
                   help="smaller settings: 'all' in under 15 minutes on 2 CPU cores")
    p.add_argument("--size", choices=["tiny", "quick", "full"],
                   help="explicit size (overrides --quick; 'tiny' is for tests)")
    p.add_argument("--out", default="reproduce", help="output directory (default: reproduce)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")


def _cmd_reproduce(args) -> int:
    from catapults.experiments import reproduce
    from catapults.storage.rundir import check_output_path

    check_output_path(args.out, "--out")
    size = args.size or ("quick" if args.quick else "full")
    results = reproduce(args.experiment, out=args.out, size=size, threads=args.threads)
    return 0 if results else 1


COMMANDS = {"reproduce": _cmd_reproduce, "run": _cmd_run, "config": _cmd_config,
            "inspect": _cmd_inspect, "data": _cmd_data, "sweep": _cmd_sweep,
            "sweep-report": _cmd_sweep_report}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="catapults", description="Loss spikes (catapults) in neural network "
                     "training: NTK spectra, critical learning rates, AGOP alignment.")
    from catapults import __version__

    parser.add_argument("--version", action="version", version=f"catapults {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_config(sub)
    _add_inspect(sub)
    _add_data(sub)
    _add_reproduce(sub)
    from catapults.sweeps import add_sweep_parsers

    add_sweep_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from catapults.data import DataError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError) as err:
        print(f"catapults: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`catapults inspect RUN | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # an output or input path the system refuses: one line, no traceback
        name = err.filename2 if err.filename2 is not None else err.filename
        reason = err.strerror or str(err)
        print(f"catapults: error: {f'{name}: ' if name is not None else ''}{reason}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("catapults: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
