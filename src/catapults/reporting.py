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
    mini_batch = any(r.get("loss") != r.get("train_loss") for r in history if "train_loss" in r)
    ax.plot(x, y, lw=0.9, color="C0", label="train loss (batch)" if mini_batch else "train loss")
    xt, yt = _series(history, "train_loss")
    if xt and mini_batch:
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


def plot_loss_split(rows: Sequence[dict[str, Any]], path: str | Path, *,
                    events: Sequence[Any] = ()) -> Path:
    """The probe loss L with its top-eigenspace part L_top and the rest L_rest (log scale)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label, color in [("ntk/L", "L (probe set)", "C0"),
                              ("ntk/L_top", "L_top (top-s eigenspace)", "C3"),
                              ("ntk/L_rest", "L_rest", "C2")]:
        x, y = _series(rows, key)
        ax.plot(x, [max(v, 1e-16) for v in y], label=label, color=color, lw=1.1)
    for ev in events:
        ax.axvspan(ev.start, ev.end, color="C3", alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss in the top eigenspace of the NTK and the rest")
    ax.legend(fontsize=8)
    path = Path(path)
    save_figure_atomic(fig, path)
    return path


def plot_spectrum(rows: Sequence[dict[str, Any]], path: str | Path, *,
                  batch_rows: Sequence[dict[str, Any]] = ()) -> Path:
    """λ_1..λ_k of the NTK against the critical level n·c/η (dashed); batch λ_max if tracked."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [r["step"] for r in rows]
    lam = [r["ntk/lambda"] for r in rows]
    k = max(len(v) for v in lam)
    for i in range(k):
        ax.plot(steps, [v[i] if i < len(v) else float("nan") for v in lam], lw=1.1,
                label=f"λ_{i + 1}", color=plt.cm.viridis(i / max(k - 1, 1)))
    ax.plot(steps, [r["ntk/critical_level"] for r in rows], "k--", lw=1.0,
            label="critical level n·c/η")
    if batch_rows:
        bs = [r["step"] for r in batch_rows]
        ax.plot(bs, [r["ntk/batch_lambda_max"] for r in batch_rows], lw=0.5, alpha=0.5,
                color="C1", label="λ_max(K_B) (batch)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("eigenvalue of K")
    ax.set_title("Top NTK eigenvalues against the critical level")
    ax.legend(fontsize=8, ncol=2)
    path = Path(path)
    save_figure_atomic(fig, path)
    return path
