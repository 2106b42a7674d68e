"""Figures and tables of runs. Every function writes a PNG atomically and returns its path."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from catapults.runs import save_figure_atomic  # noqa: E402


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(row["step"])
            ys.append(v)
    return xs, ys


def plot_training(history: Sequence[dict[str, Any]], path: str | Path, *, title: str = "",
                  events: Sequence[Any] = ()) -> Path:
    """Training loss (log scale), test loss, and the learning rate on a second axis.

    ``events`` (objects with ``start``/``peak``/``end``) are shaded on the loss curve.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x, y = _series(history, "loss")
    ax.plot(x, y, lw=0.9, color="C0", label="train loss (batch)" if any(
        r.get("loss") != r.get("train_loss") for r in history if "train_loss" in r) else
        "train loss")
    xt, yt = _series(history, "train_loss")
    if xt and any(r.get("loss") != r.get("train_loss") for r in history if "train_loss" in r):
        ax.plot(xt, yt, lw=1.2, color="C2", label="train loss (full)")
    xs, ys = _series(history, "test_loss")
    if xs:
        ax.plot(xs, ys, lw=1.2, color="C1", label="test loss")
    for i, ev in enumerate(events):
        ax.axvspan(ev.start, ev.end, color="C3", alpha=0.15, lw=0,
                   label="catapult" if i == 0 else None)
        ax.axvline(ev.peak, color="C3", lw=0.6, alpha=0.6)
    if y and min(y) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    lx, ly = _series(history, "lr")
    if lx:
        ax2 = ax.twinx()
        ax2.plot(lx, ly, color="k", lw=0.8, ls="--", alpha=0.6, label="learning rate")
        ax2.set_ylabel("learning rate")
        h2, l2 = ax2.get_legend_handles_labels()
    else:
        h2, l2 = [], []
    h1, l1 = ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    path = Path(path)
    save_figure_atomic(fig, path)
    return path
