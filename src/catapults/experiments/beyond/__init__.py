"""`catapults reproduce beyond`: the seed's next checks and open questions as experiments
(issue 15 section 3), one module each; claims, figures and CSVs like the other experiments.

- :mod:`.standard`    standard parameterisation on image data: SGD spikes in the top eigenspace
  of an MLP and a CNN, against their linearisations (seed check 1);
- :mod:`.causality`   a regulariser that moves the AGOP towards / away from the true one, at a
  learning rate below critical: does test loss follow alignment without catapults (check 2)?
- :mod:`.on_demand`   catapults placed by a controller, and prevented by a guard, against
  constant, step and cosine schedules with the same steps (check 3, open question 4);
- :mod:`.prediction`  catapults predicted k steps ahead from the batch critical rates, against
  a loss-only alarm (open question 4);
- :mod:`.activations` relu, gelu, tanh, sigmoid: the gain of catapults in each (question 3).
"""

from __future__ import annotations

from pathlib import Path

from catapults.experiments.beyond.activations import exp_activations
from catapults.experiments.beyond.causality import exp_causality
from catapults.experiments.beyond.on_demand import exp_on_demand
from catapults.experiments.beyond.prediction import exp_prediction
from catapults.experiments.beyond.standard import exp_standard
from catapults.experiments.claims import ExperimentResult
from catapults.experiments.common import _write_csv

PARTS = {"standard-images": exp_standard, "agop-causality": exp_causality,
         "on-demand": exp_on_demand, "prediction": exp_prediction,
         "activations": exp_activations}


def exp_beyond(out: Path, size: str) -> ExperimentResult:
    """Every part of :data:`PARTS` at ``size`` under ``out`` (a CSV and a figure each)."""
    claims, figs, tables = [], [], []
    for name, part in PARTS.items():
        c, rows, fig = part(out, size)
        claims += c
        figs.append(fig)
        tables.append(_write_csv(out / f"{name}.csv", rows))
    return ExperimentResult("beyond", claims, figs, tables)
