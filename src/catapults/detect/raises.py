"""Learning-rate raises and whether each can catapult: a raise lands above the critical rate
``η_crit = n·c / λ_max(K)`` measured on the probe just before it, or it cannot start a catapult
(the loss of GD on the linearised dynamics keeps falling). A raise below its critical rate is
worth saying out loud: a schedule meant to catapult that no longer can (``λ_max`` fell during the
earlier catapults, so ``η_crit`` rose above the next raise) otherwise looks like a detector miss.

Each catapult also gets a *cause* (:func:`label_causes`): a catapult that no learning-rate change
explains (GD at the edge of stability sharpens until ``η·λ ≈ 2`` and then spikes at a fixed
``η``; SGD's batches cross their own critical rates) is ``spontaneous``, and a claim that
catapults follow raises must count the ``lr raise`` ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from catapults import metrics
from catapults.detect.events import Catapult
from catapults.detect.reading import _finite, _plain

RAISE_RATIO = 1.2
"""A *raise* is a step whose learning rate is at least this factor above the previous step's
(and the previous one positive): a step or ``critical`` schedule's jump, not the small steps of
a warm-up or a ramp (the first few steps of a linear warm-up from 0 do qualify)."""


def lr_raises(history: Sequence[dict[str, Any]], events: Sequence[Catapult] = (), *,
              ratio: float = RAISE_RATIO) -> list[dict[str, Any]]:
    """The learning-rate raises of a run, from its metrics rows (``step``, ``lr``, and the NTK
    monitor's ``ntk/eta_crit`` when it ran).

    Each raise is ``{"step", "lr_before", "lr", "eta_crit", "eta_crit_step", "above_critical",
    "catapult"}``: ``eta_crit`` is the probe's critical rate measured at or before the raise
    (the last measurement before the new learning rate acts; None when the NTK was not
    tracked), ``above_critical`` whether ``lr > eta_crit`` (None when unknown), and
    ``catapult`` the index in ``events`` of the first catapult starting at or after the raise
    and before the next raise (None when there is none).
    """
    rows = [{k: _plain(r[k]) for k in (metrics.STEP, metrics.LR, metrics.NTK_ETA_CRIT) if k in r}
            for r in history if metrics.LR in r and metrics.STEP in r]
    raises: list[dict[str, Any]] = []
    prev = None
    last_crit: dict[str, Any] | None = None
    for r in rows:
        lr = r[metrics.LR]
        if prev is not None and _finite(prev) and _finite(lr) and prev > 0 and lr >= ratio * prev:
            crit = last_crit[metrics.NTK_ETA_CRIT] if last_crit else None
            raises.append({"step": r[metrics.STEP], "lr_before": prev, "lr": lr,
                           "eta_crit": crit,
                           "eta_crit_step": last_crit[metrics.STEP] if last_crit else None,
                           "above_critical": None if crit is None else bool(lr > crit),
                           "catapult": None})
        if _finite(r.get(metrics.NTK_ETA_CRIT)):
            last_crit = r
        prev = lr
    for i, rs in enumerate(raises):
        end = raises[i + 1]["step"] if i + 1 < len(raises) else float("inf")
        rs["catapult"] = next((j for j, e in enumerate(events)
                               if isinstance(e, Catapult) and rs["step"] <= e.start < end), None)
    return raises


INITIAL_STEPS = 20
"""A catapult starting within this many steps of the first, before any raise, is caused by the
initial learning rate (already above the critical rate)."""

CAUSES = ("lr raise", "lr ramp", "initial lr", "spontaneous")
"""The causes :func:`label_causes` assigns."""


def label_causes(events: Sequence[Catapult], raises: Sequence[dict[str, Any]],
                 history: Sequence[dict[str, Any]] = (), *, first_step: int = 0,
                 initial_steps: int = INITIAL_STEPS) -> dict[str, int]:
    """Set ``info["cause"]`` of each catapult in ``events`` and return the count of each cause.

    ``lr raise``: the first catapult after a raise of ``raises`` (:func:`lr_raises`) and before
    the next one; ``lr ramp``: otherwise, the learning rate (the ``lr`` of ``history``'s rows)
    rose in small steps (a warm-up, a ramp) between the end of the previous catapult (or the
    first step) and this one's start; ``initial lr``: one starting before any raise within
    ``initial_steps`` of ``first_step``; ``spontaneous``: every other one (no learning-rate
    change explains it)."""
    linked = {r["catapult"] for r in raises if r["catapult"] is not None}
    first_raise = min((r["step"] for r in raises), default=float("inf"))
    lrs = [(r[metrics.STEP], _plain(r[metrics.LR])) for r in history
           if metrics.STEP in r and _finite(_plain(r.get(metrics.LR)))]
    counts = dict.fromkeys(CAUSES, 0)
    since = first_step
    for i, ev in enumerate(events):
        stretch = [lr for step, lr in lrs if since <= step <= ev.start]
        if i in linked:
            cause = "lr raise"
        elif any(b > a for a, b in zip(stretch, stretch[1:])):
            cause = "lr ramp"
        elif ev.start < first_raise and ev.start <= first_step + initial_steps:
            cause = "initial lr"
        else:
            cause = "spontaneous"
        ev.info["cause"] = cause
        counts[cause] += 1
        since = ev.end
    return counts


def raise_warnings(raises: Sequence[dict[str, Any]]) -> list[str]:
    """One line for each raise that lands at or below its measured critical rate."""
    return [f"the learning-rate raise at step {r['step']} (to {r['lr']:.4g}) is not above the "
            f"critical rate {r['eta_crit']:.4g} measured at step {r['eta_crit_step']}: it cannot "
            "start a catapult (lambda_max fell during earlier spikes; raise further, or use the "
            "'critical' schedule, which raises to a multiple of the rate measured at the raise)"
            for r in raises if r["above_critical"] is False]
