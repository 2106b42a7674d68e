"""`catapults reproduce`: the paper's experiments, their figures, and an automated check of its
claims (SPEC.md section 2).

Each experiment trains ordinary runs (under ``OUT/EXPERIMENT/runs/``), then writes paper-style
figures (PNG), one CSV of the numbers behind each figure, and ``claims.json``: for each claim the
statistic, its value, the threshold and pass / fail. The thresholds are the constants in
:data:`catapults.experiments.claims.THRESHOLDS`, fixed in code before the results were looked at;
a failing claim is reported as failing.

The experiments, one module each (``RUNNERS`` runs them in this order):

- ``gd-single`` (:mod:`.gd_single`): one catapult in full-batch GD at 1.5x the critical learning
  rate; the loss split into its top-eigenspace part and the rest.
- ``gd-multi`` (:mod:`.gd_multi`): 0..K learning-rate raises, one catapult each; test loss and
  AGOP alignment against the number of catapults.
- ``sgd-spikes`` (:mod:`.sgd_spikes`): SGD spikes are catapults: batches crossing their own
  critical rate warn of them, and most of each spike lies in the top eigenspace.
- ``sgd-batch-size`` (:mod:`.sgd_batch_size`): smaller batches, more catapults, better AGOP
  alignment and test loss.
- ``real`` (:mod:`.real`): gd-multi and sgd-batch-size on real binary tasks.
- ``beyond`` (:mod:`.beyond`): the seed's next checks and open questions: standard
  parameterisation on images, AGOP causality, catapults on demand and prevented, prediction,
  activations.
- ``stability`` (:mod:`.stability`, :mod:`.stability_catapults`): each optimizer's own edge
  (issue 14): GD's edge of stability (sharpness hovers at 2/eta), Adam's preconditioned
  sharpness at 38/eta, catapults above the edge of momentum and Adam, SGD's batch sharpness
  against 2/eta.
- ``architectures`` (:mod:`.architectures`): gd-multi and sgd-batch-size for a CNN, a Wide ResNet
  and a ViT in NTK and standard parameterisation on the real binary tasks (issue 13).

:mod:`.claims` holds the claims, their thresholds and the ``claims.json`` document;
:mod:`.common` what the experiments share (building a run, CSVs, AGOP alignment, figures, sizes).

Sizes: ``full`` (the documented settings), ``quick`` (``--quick``: all experiments in under 15
minutes on 2 CPU cores) and ``tiny`` (the test suite). Settings not confirmed by the paper are
ours and documented in the README.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from catapults.config import ConfigError
from catapults.experiments.architectures import exp_architectures
from catapults.experiments.beyond import exp_beyond
from catapults.experiments.claims import (
    THRESHOLDS,
    Claim,
    ExperimentResult,
    _claims_doc,
    format_claims,
    make_claim,
    spearman,
)
from catapults.experiments.common import SIZES
from catapults.experiments.common import _cfg as _cfg
from catapults.experiments.common import _synthetic as _synthetic
from catapults.experiments.gd_multi import _fig_multi as _fig_multi
from catapults.experiments.gd_multi import _multi_claims as _multi_claims
from catapults.experiments.gd_multi import _multi_runs as _multi_runs
from catapults.experiments.gd_multi import exp_gd_multi
from catapults.experiments.gd_single import exp_gd_single
from catapults.experiments.real import BestRunReference, exp_real
from catapults.experiments.real import _real_tasks as _real_tasks
from catapults.experiments.sgd_batch_size import exp_sgd_batch_size
from catapults.experiments.sgd_spikes import exp_sgd_spikes
from catapults.experiments.stability import exp_stability
from catapults.storage.atomic import write_json_atomic

# The public names, as catapults.experiments exported them when it was one module. The helpers
# imported above as ``_name as _name`` are re-exported too, for the tests that reach them as
# attributes of catapults.experiments; to replace one with monkeypatch, patch the module whose
# functions look it up (e.g. catapults.experiments.gd_multi._cfg), not this package.
__all__ = [
    "EXPERIMENTS", "RESUMABLE", "RUNNERS", "SIZES", "THRESHOLDS", "BestRunReference", "Claim",
    "ExperimentResult", "exp_architectures", "exp_beyond", "exp_gd_multi", "exp_gd_single",
    "exp_real", "exp_sgd_batch_size", "exp_sgd_spikes", "exp_stability", "format_claims",
    "make_claim", "reproduce", "spearman",
]

EXPERIMENTS = ("gd-single", "gd-multi", "sgd-spikes", "sgd-batch-size", "real", "beyond",
               "stability", "architectures")

RUNNERS: dict[str, Callable[[Path, str], ExperimentResult]] = {
    "gd-single": exp_gd_single,
    "gd-multi": exp_gd_multi,
    "sgd-spikes": exp_sgd_spikes,
    "sgd-batch-size": exp_sgd_batch_size,
    "real": exp_real,
    "beyond": exp_beyond,
    "stability": exp_stability,
    "architectures": exp_architectures,
}


RESUMABLE = ("architectures",)
"""The experiments that record finished units (:mod:`.units`) and reuse them with ``resume``."""


def reproduce(experiment: str, *, out: str | Path = "reproduce", size: str = "full",
              threads: int | None = None, echo: Callable[[str], None] | None = print,
              resume: bool = False) -> list[ExperimentResult]:
    """Run ``experiment`` (one of EXPERIMENTS or ``"all"``) at ``size`` under ``out``.

    Writes ``out/EXPERIMENT/`` (runs, figures, CSVs, claims.json) and ``out/claims.json``.
    ``resume``: the experiments of :data:`RESUMABLE` reuse the units a previous (killed) call
    at the same size finished under ``out`` (their CSVs; the claims, tables and figures are
    made again); the others run in full.
    """
    if experiment != "all" and experiment not in RUNNERS:
        raise ConfigError(f"experiment: {experiment!r} is not one of "
                          f"{', '.join(EXPERIMENTS)}, all")
    if size not in SIZES:
        raise ConfigError(f"size: {size!r} is not one of {', '.join(SIZES)}")
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(out)
    names = list(RUNNERS) if experiment == "all" else [experiment]
    results = []
    for name in names:
        t0 = time.perf_counter()
        if echo:
            echo(f"[reproduce] {name} ({size}) ...")
        if resume and name in RESUMABLE:
            res = RUNNERS[name](out / name, size, resume=True)
        else:
            if resume and echo:
                echo(f"[reproduce] {name}: records no units, --resume reuses nothing of it")
            res = RUNNERS[name](out / name, size)
        res.seconds = time.perf_counter() - t0
        write_json_atomic(out / name / "claims.json", _claims_doc([res], size))
        results.append(res)
        if echo:
            counts = {k: sum(c.status == k for c in res.claims)
                      for k in ("pass", "fail", "not run")}
            echo(f"[reproduce] {name}: {counts['pass']} pass, {counts['fail']} fail, "
                 f"{counts['not run']} not run of {len(res.claims)} claims, "
                 f"{res.seconds:.0f} s; figures: "
                 + ", ".join(str(p) for p in res.figures))
    write_json_atomic(out / "claims.json", _claims_doc(results, size))
    if echo:
        echo("")
        echo(format_claims([c for r in results for c in r.claims]))
        echo(f"\nclaims.json: {out / 'claims.json'}")
    return results
