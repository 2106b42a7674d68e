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


def lr_changes(history: Sequence[dict[str, Any]], *, rel: float = 0.2) -> list[int]:
    """Steps where the learning rate jumps by more than ``rel`` (relative) from the previous
    row: the raises and drops of a step or critical schedule (a smooth schedule has none)."""
    out, prev = [], None
    for r in history:
        v = r.get(metrics.LR)
        if isinstance(v, (int, float)) and math.isfinite(v):
            if prev is not None and prev > 0 and abs(v - prev) > rel * prev:
                out.append(int(r[metrics.STEP]))
            prev = v
    return out


def _mark(ax: Axes, events: Sequence[Any], raises: Sequence[int]) -> None:
    """Shade catapults (start..end, a line at the peak) and draw the learning-rate jumps."""
    for i, ev in enumerate(events):
        ax.axvspan(ev.start, ev.end, color="C3", alpha=0.15, lw=0,
                   label="catapult (start..end)" if i == 0 else None)
        ax.axvline(ev.peak, color="C3", lw=0.6, alpha=0.6)
    for i, t in enumerate(raises):
        ax.axvline(t, color="0.4", lw=0.8, ls=":", label="lr change" if i == 0 else None)


def _draw_losses(ax: Axes, history: Sequence[dict[str, Any]]) -> None:
    x, y = _series(history, metrics.LOSS)
    mini_batch = any(r.get(metrics.LOSS) != r.get(metrics.TRAIN_LOSS) for r in history
                     if metrics.TRAIN_LOSS in r)
    ax.plot(x, y, lw=0.9, color="C0", label="train loss (batch)" if mini_batch else "train loss")
    xt, yt = _series(history, metrics.TRAIN_LOSS)
    if xt and mini_batch:
        ax.plot(xt, yt, lw=1.2, color="C2", label="train loss (full)")
    xs, ys = _series(history, metrics.TEST_LOSS)
    if xs:
        ax.plot(xs, ys, lw=1.2, color="C1", label="test loss")
    if y and min(y) > 0:
        ax.set_yscale("log")
    ax.set_ylabel("loss (mean MSE)")


def _draw_rates(ax: Axes, history: Sequence[dict[str, Any]]) -> None:
    """The learning rate against the critical rates that the NTK monitor measured."""
    lx, ly = _series(history, metrics.LR)
    ax.plot(lx, ly, color="k", lw=1.0, label="learning rate η")
    ex, ey = _series(history, metrics.NTK_ETA_CRIT)
    if ex:
        ax.plot(ex, ey, color="C4", lw=1.0, ls="--", marker=".", ms=2,
                label="η_crit = n·c/λ_max (probe)")
    bx, by = _series(history, metrics.NTK_BATCH_ETA_CRIT)
    if bx:
        ax.plot(bx, by, ".", color="C1", ms=1.5, alpha=0.4, label="η_crit(B) of each batch")
    top = max([*ly, *ey, *by], default=1.0)
    ax.set_ylim(0, 1.15 * top if top > 0 else 1.0)
    ax.set_ylabel("learning rate")


def plot_training(history: Sequence[dict[str, Any]], path: str | Path | None = None, *,
                  title: str = "", events: Sequence[Any] = (), ax: Axes | None = None) -> Figure:
    """Losses (log scale) above, learning rate against the measured critical rates below.

    Catapults (objects with ``start``/``peak``/``end``) are shaded and learning-rate jumps
    marked in both panels. With ``ax`` only the loss panel is drawn, into ``ax``.
    """
    raises = lr_changes(history)
    if ax is not None:
        fig = ax.figure
        _draw_losses(ax, history)
        _mark(ax, events, raises)
        ax.set_xlabel("step")
        ax.legend(fontsize=8, loc="best")
        return fig  # type: ignore[return-value]
    fig = Figure(figsize=(8, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    _draw_losses(top, history)
    _mark(top, events, raises)
    _draw_rates(bottom, history)
    _mark(bottom, events, raises)
    bottom.set_xlabel("step")
    for a in (top, bottom):
        a.grid(alpha=0.25)
        a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        top.set_title(title)
    return _finish(fig, path)


def plot_loss_split(rows: Sequence[dict[str, Any]], path: str | Path | None = None, *,
                    events: Sequence[Any] = (), ax: Axes | None = None,
                    floor: float = 1e-5) -> Figure:
    """The probe loss L (black) with its top-eigenspace part L_top and the rest L_rest.

    A part below ``floor`` × L at its step is not drawn (the line is broken there): at float32
    precision it is rounding noise of the total, not signal. Catapults are shaded and
    learning-rate jumps marked."""
    fig, ax = _axes(ax, figsize=(8, 4.5))
    steps = [r[metrics.STEP] for r in rows]
    total = [_num(r.get(metrics.NTK_L)) for r in rows]
    hidden = False
    for key, label, color in [(metrics.NTK_L_TOP, "L_top (top-s eigenspace)", "C3"),
                              (metrics.NTK_L_REST, "L_rest (the rest)", "C2")]:
        ys = []
        for r, L in zip(rows, total):
            v = _num(r.get(key))
            keep = math.isfinite(v) and math.isfinite(L) and v > floor * L and v > 0
            hidden |= math.isfinite(v) and not keep
            ys.append(v if keep else math.nan)
        ax.plot(steps, ys, label=label, color=color, lw=1.2, alpha=0.85, zorder=2)
    ax.plot(steps, [v if v > 0 else math.nan for v in total], label="L (probe set, total)",
            color="k", lw=1.0, ls=(0, (4, 2)), zorder=3)
    _mark(ax, events, lr_changes(rows))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("probe loss (mean MSE)")
    ax.set_title("Probe loss in the top eigenspace of the NTK and the rest"
                 + (f"\n(a part below {floor:g}·L at its step is float noise: not drawn)"
                    if hidden else ""), fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


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
