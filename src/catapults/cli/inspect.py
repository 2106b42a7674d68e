"""``catapults inspect RUN``: a run's catapults (events) as a table, optionally a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catapults.cli.common import spike_ratio
from catapults.config import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def add_parsers(sub) -> None:
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


def cmd_inspect(args) -> int:
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
        notes = data.get("warnings") or []
        if not (isinstance(notes, list) and all(isinstance(x, str) for x in notes)):
            raise ConfigError(f"{path}: 'warnings' must be a list of strings")
    else:
        kw = {}
        if args.ratio is not None:  # the return ratio (default 1.5) must stay below the ratio
            kw = {"ratio": args.ratio, "return_ratio": min(1.5, (1 + args.ratio) / 2)}
        res = analyse_history(history, **kw)
        events, warn = [e.to_dict() for e in res["events"]], res["early_warning"]
        cal, n_osc = res["calibration"], len(res["oscillations"])
        confirmed = res["confirmed_count"]
        notes = res["warnings"]
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
    for note in notes:
        print(f"note: {note}")
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
