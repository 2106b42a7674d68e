"""What the NTK monitor saw around each event, spectral confirmation, early warning."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from catapults import metrics
from catapults.detect.events import (
    CONFIRM_SHARE,
    Catapult,
)
from catapults.detect.reading import (
    _finite,
    _is_bool,
    _is_ndarray,
    _is_tensor,
    _plain,
)


# ---- attribution: what the NTK monitor saw around each event ---------------------------------
def _nearest(rows: list[dict[str, Any]], step: int, *, before: bool | None = None):
    best = None
    for r in rows:
        if before is True and r["step"] > step:
            continue
        if before is False and r["step"] < step:
            continue
        if best is None or abs(r["step"] - step) < abs(best["step"] - step):
            best = r
    return best


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with the values attribute_events reads (step, lr, ntk/...) as Python
    numbers and lists."""
    return {k: _plain(v) if k in ("step", "lr") or str(k).startswith("ntk/") else v
            for k, v in row.items()}


def _confirmed(ev: Catapult, confirm_share: float) -> bool | None:
    """The paper's definition of a catapult, checked on the NTK measurements in ``ev.info``:
    carried by the top eigenspace at its peak and lambda_max lower after it than before."""
    info = ev.info
    share, before, after = (info.get("top_share"), info.get("lambda_max_before"),
                            info.get("lambda_max_after"))
    if ev.kind != "catapult" or not all(_finite(v) for v in (share, before, after)):
        return None
    return bool(share >= confirm_share and after < before)


def attribute_events(events: list[Catapult], history: Sequence[dict[str, Any]], *,
                     confirm_share: float = CONFIRM_SHARE) -> None:
    """Fill each event's ``info`` from a run's metrics rows (``ntk/...`` keys, ``lr``):

    ``lr`` (at the trigger), ``top_share`` (``L_top/L`` at the probe measurement with the largest
    loss inside the event), ``top_share_max`` (the largest ``L_top/L`` measured inside it: at the
    very peak of a violent catapult the kernel itself is distorted), ``top_share_by_s`` (the share
    at that measurement for s = 1..k),
    ``L_rest_before`` / ``L_rest_after`` and their change, ``lambda_max_before`` / ``_after``
    (at or before the start, at or after the end), the critical level ``n·c/η`` (``η`` the lr at
    the trigger, so that a row's ``lr`` and ``critical_level`` are the pair that decides) and the
    ``eta_crit`` before and after; and ``confirmed``: True when ``top_share >= confirm_share``
    (default 0.5) and ``lambda_max_after < lambda_max_before`` (the paper's definition of a
    catapult), False when either fails, None when they cannot be measured (no NTK rows, a
    divergence, no measurement after the end). Oscillation episodes are skipped.

    The values read (``step``, ``lr``, ``ntk/...``) may be Python, numpy or torch numbers and
    arrays; ``info`` gets Python numbers and lists (so ``events.json`` can be written).
    """
    history = [_plain_row(r) for r in history]
    by_step = {r["step"]: r for r in history}
    ntk_rows = [r for r in history if r.get(metrics.NTK_LAMBDA)]
    for ev in events:
        if not isinstance(ev, Catapult):
            continue
        info = ev.info
        trig = by_step.get(ev.trigger) or by_step.get(ev.start) or {}
        info["lr"] = trig.get("lr")
        info["confirmed"] = None
        if not ntk_rows:
            continue
        inside = [r for r in ntk_rows
                  if ev.start <= r["step"] <= ev.end and _finite(r[metrics.NTK_L])]
        at_peak = (max(inside, key=lambda r: r[metrics.NTK_L]) if inside else
                   _nearest(ntk_rows, ev.peak))
        before = _nearest(ntk_rows, ev.start, before=True)
        after = _nearest(ntk_rows, ev.end, before=False) if ev.recovered else None
        shares = [r[metrics.NTK_L_TOP] / r[metrics.NTK_L] for r in inside
                  if _finite(r.get(metrics.NTK_L_TOP)) and r[metrics.NTK_L] > 0]
        if shares:
            info["top_share_max"] = max(shares)
        if at_peak and at_peak.get(metrics.NTK_L_TOP_BY_S) and _finite(at_peak.get(metrics.NTK_L)) \
                and at_peak[metrics.NTK_L] > 0:
            info["top_share_by_s"] = [v / at_peak[metrics.NTK_L]
                                      for v in at_peak[metrics.NTK_L_TOP_BY_S]]
        if at_peak and _finite(at_peak.get(metrics.NTK_L)) and at_peak[metrics.NTK_L] > 0:
            info["top_share"] = at_peak[metrics.NTK_L_TOP] / at_peak[metrics.NTK_L]
            info["top_share_step"] = at_peak["step"]
            info["s"] = at_peak.get(metrics.NTK_S)
        if before:
            info["lambda_max_before"] = before[metrics.NTK_LAMBDA][0]
            info["eta_crit_before"] = before[metrics.NTK_ETA_CRIT]
            # n·c/η for the lr at the trigger (the pair that decides whether the update that
            # set the catapult off was above critical), from the row before the start, whose
            # own lr may be an earlier one: critical_level scales as 1/η
            level, lr_b, lr_t = (before[metrics.NTK_CRITICAL_LEVEL], before.get("lr"),
                                 info.get("lr"))
            info["critical_level"] = (level * lr_b / lr_t if all(_finite(v) for v in
                                      (level, lr_b, lr_t)) and lr_t > 0 else level)
            info["L_rest_before"] = before[metrics.NTK_L_REST]
        if after:
            info["lambda_max_after"] = after[metrics.NTK_LAMBDA][0]
            info["eta_crit_after"] = after[metrics.NTK_ETA_CRIT]
            info["L_rest_after"] = after[metrics.NTK_L_REST]
        if before and after:
            info["L_rest_change"] = after[metrics.NTK_L_REST] - before[metrics.NTK_L_REST]
        if metrics.NTK_BATCH_ETA_CRIT in trig:
            info["batch_eta_crit"] = trig[metrics.NTK_BATCH_ETA_CRIT]
        info["confirmed"] = _confirmed(ev, confirm_share)


def _step(v: Any, what: str) -> int | float:
    """A step number (Python, numpy or 0-d torch) as a Python int or float."""
    v = _plain(v)
    if _is_bool(v) or not isinstance(v, (int, float)):
        raise TypeError(f"{what} must be a step number, got {v!r} ({type(v).__name__})")
    return v


def _steps(flags: Any) -> list[int | float]:
    """A one-dimensional series of step numbers (see :func:`early_warning`) as a Python list."""
    if _is_tensor(flags) or _is_ndarray(flags):
        if flags.ndim != 1:
            raise ValueError(f"flags must be one-dimensional, got shape {tuple(flags.shape)}")
    elif isinstance(flags, (str, bytes)) or not isinstance(flags, Iterable):
        raise TypeError(f"flags must be a sequence of step numbers, got {type(flags).__name__}")
    return [_step(v, f"flags[{i}]") for i, v in enumerate(_plain(flags))]


def early_warning(flags: Iterable[Any], events: Sequence[Catapult], *, window: int,
                  n_steps: int) -> dict[str, Any]:
    """Precision and recall of "flag at step t, then an event starts within t..t+window".

    ``flags`` are the steps whose batch had ``η > η_crit(B)``. Precision: the share of flags
    followed by an event start within the window; recall: the share of events whose start has a
    flag within ``window`` steps before it (or at it). Both are None when undefined.

    ``flags`` may be a list or tuple of Python, numpy or 0-d torch numbers, a one-dimensional
    numpy array or a torch tensor (any device); a bool or a non-number is a TypeError.
    """
    starts = [_step(ev.start, "an event start") for ev in events]
    flags = sorted(_steps(flags))
    window, n_steps = _step(window, "window"), _step(n_steps, "n_steps")
    hits = sum(any(t <= s <= t + window for s in starts) for t in flags)
    found = sum(any(s - window <= t <= s for t in flags) for s in starts)
    return {
        "window": window,
        "flags": len(flags),
        "events": len(starts),
        "steps": n_steps,
        "flag_rate": len(flags) / n_steps if n_steps else None,
        "precision": hits / len(flags) if flags else None,
        "recall": found / len(starts) if starts else None,
    }
