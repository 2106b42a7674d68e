"""Figures of runs. Each function draws on a new :class:`~matplotlib.figure.Figure` (or on the
``ax`` it is given), writes it as a PNG atomically when given a ``path``, and returns the figure.
Nothing here selects a matplotlib backend or touches pyplot's global state: figures are made
with :class:`matplotlib.figure.Figure`, so importing or calling this in a notebook changes
nothing there."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from catapults import metrics
from catapults.curvature.agop import FactoredAGOP, Matrix
from catapults.storage.atomic import save_figure_atomic


def _axes(ax: Axes | None, *, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The figure and axes to draw on: ``ax``'s, or a new figure with one axes."""
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    """Lay out ``fig``, write it to ``path`` (PNG, atomically) if given, and return it."""
    fig.tight_layout()
    if path is not None:
        save_figure_atomic(fig, path)
    return fig


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        v = row.get(key)
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(row["step"])
            ys.append(v)
    return xs, ys


def plot_training(history: Sequence[dict[str, Any]], path: str | Path | None = None, *,
                  title: str = "", events: Sequence[Any] = (), ax: Axes | None = None) -> Figure:
    """Training loss (log scale), test loss, and the learning rate on a second axis.

    ``events`` (objects with ``start``/``peak``/``end``) are shaded on the loss curve.
    """
    fig, ax = _axes(ax, figsize=(8, 4.5))
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
    return _finish(fig, path)


def plot_loss_split(rows: Sequence[dict[str, Any]], path: str | Path | None = None, *,
                    events: Sequence[Any] = (), ax: Axes | None = None) -> Figure:
    """The probe loss L with its top-eigenspace part L_top and the rest L_rest (log scale)."""
    fig, ax = _axes(ax, figsize=(8, 4.5))
    for key, label, color in [(metrics.NTK_L, "L (probe set)", "C0"),
                              (metrics.NTK_L_TOP, "L_top (top-s eigenspace)", "C3"),
                              (metrics.NTK_L_REST, "L_rest", "C2")]:
        x, y = _series(rows, key)
        ax.plot(x, [max(v, 1e-16) for v in y], label=label, color=color, lw=1.1)
    for ev in events:
        ax.axvspan(ev.start, ev.end, color="C3", alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss in the top eigenspace of the NTK and the rest")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_spectrum(rows: Sequence[dict[str, Any]], path: str | Path | None = None, *,
                  batch_rows: Sequence[dict[str, Any]] = (), ax: Axes | None = None) -> Figure:
    """λ_1..λ_k of the NTK against the critical level n·c/η (dashed); batch λ_max if tracked."""
    fig, ax = _axes(ax, figsize=(8, 4.5))
    steps = [r["step"] for r in rows]
    lam = [r[metrics.NTK_LAMBDA] for r in rows]
    k = max(len(v) for v in lam)
    for i in range(k):
        ax.plot(steps, [v[i] if i < len(v) else float("nan") for v in lam], lw=1.1,
                label=f"λ_{i + 1}", color=colormaps['viridis'](i / max(k - 1, 1)))
    ax.plot(steps, [r[metrics.NTK_CRITICAL_LEVEL] for r in rows], "k--", lw=1.0,
            label="critical level n·c/η")
    if batch_rows:
        bs = [r["step"] for r in batch_rows]
        ax.plot(bs, [r[metrics.NTK_BATCH_LAMBDA_MAX] for r in batch_rows], lw=0.5, alpha=0.5,
                color="C1", label="λ_max(K_B) (batch)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("eigenvalue of K")
    ax.set_title("Top NTK eigenvalues against the critical level")
    ax.legend(fontsize=8, ncol=2)
    return _finish(fig, path)


def plot_agop(G: Tensor, path: str | Path | None = None, *, reference: Matrix | None = None,
              block: int = 20, top_k: int = 20, eigenvalues: Tensor | None = None) -> Figure:
    """Heat map of the top-left ``block × block`` corner of ``G`` (and of ``reference``), and
    the top ``top_k`` eigenvalues of both (each normalised by its largest)."""
    G = G.detach().double().cpu()
    k = min(block, G.shape[0])
    ref = None
    if reference is not None:
        if isinstance(reference, FactoredAGOP):
            Fk, w = reference.F[:, :k].double(), reference.w.double()
            corner = (Fk.T * w) @ Fk
            ref_vals = reference.eigenvalues(top_k).double()
        else:
            corner = reference[:k, :k].double()
            ref_vals = torch.linalg.eigvalsh(reference.double()).flip(0)[:top_k].clamp_min(0)
        ref = (corner.cpu(), ref_vals.cpu())
    vals = (eigenvalues.double() if eigenvalues is not None
            else torch.linalg.eigvalsh(G).flip(0)[:top_k].clamp_min(0))
    panels = 3 if ref is not None else 2
    fig = Figure(figsize=(4.6 * panels, 4.0))
    axes = fig.subplots(1, panels)
    mats = [("network AGOP", G[:k, :k])] + ([("reference AGOP", ref[0])] if ref else [])
    for ax, (title, M) in zip(axes, mats):
        lim = float(M.abs().max()) or 1.0
        im = ax.imshow(M.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{title}: top-left {k}x{k}")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax = axes[-1]
    for label, v, style in [("network", vals, "o-")] + ([("reference", ref[1], "s--")] if ref
                                                        else []):
        v = v[: top_k]
        top = float(v[0]) if v.numel() and float(v[0]) > 0 else 1.0
        rel = v / top
        keep = rel > 1e-12  # exact zeros (e.g. a low-rank target AGOP) are left out
        idx = torch.arange(1, v.numel() + 1)[keep]
        ax.plot(idx.numpy(), rel[keep].numpy(), style, ms=3,
                label=f"{label} (λ1 = {top:.3g}; {int(keep.sum())} non-zero shown)")
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue / largest")
    ax.set_title(f"top {top_k} eigenvalues")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_alignment(rows: list[dict[str, Any]], path: str | Path | None = None, *,
                   centered: bool = False, sqrt: bool = False, ax: Axes | None = None) -> Figure:
    """AGOP alignment against step."""
    pts = [(r["step"], r[metrics.AGOP_ALIGNMENT]) for r in rows
           if r[metrics.AGOP_ALIGNMENT] is not None and math.isfinite(r[metrics.AGOP_ALIGNMENT])]
    fig, ax = _axes(ax, figsize=(7, 4))
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "o-", ms=3, lw=1.2, color="C4")
    variant = ", ".join(v for v, on in [("centred", centered), ("sqrt", sqrt)] if on)
    ax.set_xlabel("step")
    ax.set_ylabel("AGOP alignment ρ" + (f" ({variant})" if variant else ""))
    ax.set_title("alignment of the network's AGOP with the reference AGOP")
    ax.grid(alpha=0.3)
    return _finish(fig, path)
