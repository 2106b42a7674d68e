"""The report of a sweep directory: each metric aggregated over the seeds, as a table and figures.

``DIR/report/report.csv`` holds the aggregate table (``catapults sweep-report DIR``): one row per
point of the swept parameters, mean, sample std and n of each metric over the seeds.
``DIR/report/*.png`` plots each metric against each swept parameter (mean +- std).
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catapults.config import ConfigError, read_yaml
from catapults.storage.atomic import save_figure_atomic, write_text_atomic
from catapults.sweeps.index import FINISHED, read_index, read_trial_status
from catapults.sweeps.spec import (
    DEFAULT_METRICS,
    canonical_json,
    flatten,
    format_value,
    get_dotted,
)

LOG_X_FIELDS = ("lr", "batch_size", "n_train", "width", "weight_decay")


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    return None


@dataclass
class Report:
    """What :func:`sweep_report` returns: the grouped table, the CSV and figure paths."""

    groups: list[dict[str, Any]]
    csv: Path
    figures: list[Path]
    metrics: list[str]
    swept: list[str]


def _stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    return {"n": n, "mean": statistics.fmean(values) if n else None,
            "std": statistics.stdev(values) if n >= 2 else None,
            "min": min(values) if n else None, "max": max(values) if n else None}


def sweep_report(sweep_dir: str | Path, *, metrics: Iterable[str] | None = None,
                 include: Iterable[str] = ("completed",), figures: bool = True) -> Report:
    """Aggregate a sweep directory: each metric grouped by the swept parameters (mean, sample
    std (ddof 1), n over the seeds; trials whose status is in ``include``, finite values only)
    into ``DIR/report/report.csv``, and one figure per (metric, swept parameter)."""
    sweep_dir = Path(sweep_dir)
    rows = read_index(sweep_dir, strict=True)
    spec: Any = {}
    spec_path = sweep_dir / "sweep.yaml"
    if spec_path.exists():
        spec = read_yaml(spec_path, "sweep file") or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{spec_path}: expected a mapping (a sweep file)")
        if not isinstance(spec.get("metrics") or [], list) or not all(
                isinstance(m, str) and m for m in spec.get("metrics") or []):
            raise ConfigError(f"{spec_path}: metrics: must be a list of dotted names")
    metric_list = list(metrics) if metrics else list(spec.get("metrics") or DEFAULT_METRICS)
    include = set(include)
    swept: list[str] = []
    for r in rows:
        swept += [k for k in r["params"] if k not in swept]
    summaries: dict[str, dict[str, Any] | None] = {}
    for r in rows:
        trial_dir = sweep_dir / r.get("dir", f"trials/{r['trial_id']}")
        status, summaries[r["trial_id"]] = read_trial_status(trial_dir)
        if status == "unfinished" and (trial_dir / "summary.json").is_file():
            raise ConfigError(f"{trial_dir / 'summary.json'}: not a run summary (expected a "
                              "JSON object; re-run the sweep to run this trial again)")
    known = {k for s in summaries.values() if s for k in flatten(s)}
    unknown = [m for m in metric_list if m not in known]
    if known and unknown:
        numeric = ", ".join(sorted({k for s in summaries.values() if s
                                    for k, v in flatten(s).items() if _as_float(v) is not None}))
        what = f"metric {', '.join(map(repr, unknown))} found in no trial's summary.json"
        if metrics:
            raise ConfigError(f"{what} (known: {numeric})")
        if spec.get("metrics"):
            print(f"catapults: warning: {spec_path}: {what} (known: {numeric})", file=sys.stderr)

    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        params = {k: r["params"].get(k) for k in swept}
        key = canonical_json(params)
        g = groups.setdefault(key, {"params": params, "trials": 0, "statuses": {}, "values": {
            m: [] for m in metric_list}, "seeds": {m: [] for m in metric_list}})
        g["trials"] += 1
        g["statuses"][r["status"]] = g["statuses"].get(r["status"], 0) + 1
        if r["status"] not in include:
            continue
        summary = summaries[r["trial_id"]]
        for m in metric_list:
            v = _as_float(get_dotted(summary or {}, m))
            if v is not None:
                g["values"][m].append(v)
                g["seeds"][m].append(r.get("seed"))
    table = []
    for g in groups.values():
        entry = {"params": g["params"], "trials": g["trials"],
                 "completed": g["statuses"].get("completed", 0),
                 "diverged": g["statuses"].get("diverged", 0),
                 "failed": sum(v for k, v in g["statuses"].items() if k not in FINISHED),
                 "stats": {m: _stats(g["values"][m]) for m in metric_list},
                 "values": g["values"]}
        table.append(entry)

    out = sweep_dir / "report"
    csv_path = out / "report.csv"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory (the report goes there)")
    pngs = [out / f"{_safe(m)}__vs__{_safe(p)}.png" for m in metric_list for p in swept]
    for path in [csv_path] + (pngs if figures else []):
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory (the report writes a file there)")
    head = swept + ["trials", "completed", "diverged", "failed"]
    for m in metric_list:
        head += [f"{m}.mean", f"{m}.std", f"{m}.n"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for e in table:
        line = [format_value(e["params"][k]) for k in swept]
        line += [e["trials"], e["completed"], e["diverged"], e["failed"]]
        for m in metric_list:
            s = e["stats"][m]
            line += [_fmt_csv(s["mean"]), _fmt_csv(s["std"]), s["n"]]
        w.writerow(line)
    write_text_atomic(csv_path, buf.getvalue())
    paths = []
    if figures:
        for m in metric_list:
            for p in swept:
                path = _plot_metric(table, m, p, swept, out)
                if path is not None:
                    paths.append(path)
    return Report(table, csv_path, paths, metric_list, swept)


def _fmt_csv(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


LABELS = {
    "final_test_loss": "final test loss", "final_train_loss": "final train loss",
    "final_test_error": "final test error", "final_train_error": "final train error",
    "monitors.events.count": "catapults per run",
    "monitors.events.recovered": "recovered catapults per run",
    "monitors.agop.final_alignment": "final AGOP alignment ρ",
    "monitors.agop.max_alignment": "max AGOP alignment ρ",
    "monitors.ntk.final_eta_crit": "final η_crit", "wall_time_s": "wall time (s)",
    "train.batch_size": "batch size", "train.lr": "learning rate η", "train.seed": "seed",
    "model.width": "width", "model.depth": "depth", "data.n_train": "training samples",
}
"""Axis labels for the usual metrics and swept fields (others: their last part, spaced)."""


def label_for(key: str) -> str:
    """A readable axis label for a metric path or a dotted config field."""
    return LABELS.get(key, key.split(".")[-1].replace("_", " "))


def use_log_x(param: str, xs: list[float]) -> bool:
    """Log-x for positive learning rates, batch sizes, widths..., or values spanning 100x."""
    if not xs or min(xs) <= 0:
        return False
    return param.split(".")[-1] in LOG_X_FIELDS or max(xs) / min(xs) >= 100


def _plot_metric(table: list[dict[str, Any]], metric: str, param: str, swept: list[str],
                 out: Path) -> Path | None:
    from matplotlib.figure import Figure

    if not any(e["stats"][metric]["n"] for e in table):
        return None
    values = []
    for e in table:
        v = e["params"][param]
        if v not in values:
            values.append(v)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        def pos(v):
            return float(v)
    else:
        def pos(v):
            return float(values.index(v))
    others = [k for k in swept if k != param]
    lines: dict[str, list[dict[str, Any]]] = {}
    for e in table:
        label = ", ".join(f"{k.split('.')[-1]}={format_value(e['params'][k])}" for k in others)
        lines.setdefault(label, []).append(e)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (label, entries) in enumerate(lines.items()):
        entries = sorted((e for e in entries if e["stats"][metric]["n"]),
                         key=lambda e: pos(e["params"][param]))
        if not entries:
            continue
        color = f"C{i % 10}"
        xs = [pos(e["params"][param]) for e in entries]
        means = [e["stats"][metric]["mean"] for e in entries]
        stds = [e["stats"][metric]["std"] or 0.0 for e in entries]
        ax.plot(xs, means, "o-", color=color,
                label=f"{label}: mean ± std" if label else "mean ± std over seeds")
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)],
                        [m + s for m, s in zip(means, stds)], color=color, alpha=0.2, lw=0)
        for x, e in zip(xs, entries):
            vals = e["values"][metric]
            ax.scatter([x] * len(vals), vals, color=color, s=10, alpha=0.5, zorder=3)
    if numeric and use_log_x(param, [float(v) for v in values]):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([float(v) for v in values])
        ax.set_xticklabels([format_value(v) for v in values])
    if not numeric:
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([format_value(v) for v in values])
    ax.set_xlabel(label_for(param))
    ax.set_ylabel(label_for(metric))
    n_seeds = max(e["stats"][metric]["n"] for e in table)
    ax.set_title(f"{label_for(metric)} vs {label_for(param)} (up to {n_seeds} seed(s) per "
                 "point)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path = out / f"{_safe(metric)}__vs__{_safe(param)}.png"
    save_figure_atomic(fig, path, dpi=110)
    return path


def format_report(report: Report) -> str:
    """The report table as aligned text (mean ± std (n) per metric)."""
    head = report.swept + ["ok/div/fail"] + report.metrics
    rows = []
    for e in report.groups:
        line = [format_value(e["params"][k]) for k in report.swept]
        line.append(f"{e['completed']}/{e['diverged']}/{e['failed']}")
        for m in report.metrics:
            s = e["stats"][m]
            if not s["n"]:
                line.append("-")
            else:
                std = "" if s["std"] is None else f" ± {s['std']:.3g}"
                line.append(f"{s['mean']:.4g}{std} (n={s['n']})")
        rows.append(line)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)

