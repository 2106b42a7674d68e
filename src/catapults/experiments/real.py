"""real: gd-multi and sgd-batch-size on real binary tasks (digits always; MNIST, Fashion-MNIST,
CIFAR-10, SVHN and CelebA at full size when present), with the AGOP of the best-generalising run
as the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from catapults.agop import agop
from catapults.config import config_from_dict
from catapults.data import make_dataset
from catapults.data.discovery import list_datasets
from catapults.experiments.claims import THRESHOLDS, ExperimentResult, make_claim
from catapults.experiments.common import _seeds, _write_csv
from catapults.experiments.gd_multi import _fig_multi, _multi_claims, _multi_runs
from catapults.experiments.sgd_batch_size import _batch_claims, _batch_runs, _fig_batch
from catapults.runs import RunResult

FULL_SIZE_SETS = ("mnist", "fashion-mnist", "cifar10", "svhn", "celeba")
"""The real data sets the full size uses when their files are present (digits ships with
scikit-learn and is always there); an absent one is reported with its claims ``not run``."""


def _real_tasks(size: str) -> list[dict[str, Any]]:
    n = {"tiny": 48, "quick": 200, "full": 500}[size]
    # digits has 357 images of 3 and 8 in all: at most 200 train + 150 test at every size
    tasks = [{"name": "digits", "classes": [3, 8], "n_train": min(n, 200),
              "n_test": 150 if size != "tiny" else 60}]
    if size == "full":
        present = {r["name"] for r in list_datasets() if r["present"]}
        for name in ["mnist", "fashion-mnist", "cifar10", "svhn"]:
            if name in present:
                tasks.append({"name": name, "classes": [0, 1], "n_train": n, "n_test": 1000,
                              "grayscale": name in ("cifar10", "svhn"), "image_size": 14})
        if "celeba" in present:
            tasks.append({"name": "celeba", "attribute": "Smiling", "n_train": n,
                          "n_test": 1000, "grayscale": True, "image_size": 16})
    return tasks


class BestRunReference:
    """AGOP of the best-generalising completed run (lowest test loss) on its training inputs:
    the proxy for the unknown true AGOP on real data (SPEC.md section 1). ``path`` records which
    run it came from."""

    def __init__(self) -> None:
        self.path: str | None = None

    def __call__(self, results: list[RunResult]) -> tuple[torch.Tensor, torch.Tensor]:
        ok = [r for r in results if r.status == "completed"]
        if not ok:
            raise RuntimeError("no completed run to take the reference AGOP from")
        best = min(ok, key=lambda r: r.summary["final_test_loss"])
        cfg = config_from_dict(yaml.safe_load((best.dir / "config.yaml").read_text()))
        X = make_dataset(cfg.data).X_train.float()
        self.path = str(best.dir)
        return agop(best.model.to("cpu").float(), X), X


def exp_real(out: Path, size: str) -> ExperimentResult:
    """gd-multi and sgd-batch-size on real binary tasks (digits always; others when present)."""
    claims, figs, tables, notes = [], [], [], []
    if size == "full":  # the data sets the full size would use but that are not here
        present = {t["name"] for t in _real_tasks(size)}
        for name in [n for n in FULL_SIZE_SETS if n not in present]:
            why = (f"the {name} files are not present (see `catapults data`); run `make data` "
                   "or set $CATAPULTS_DATA")
            claims += [make_claim(f"real-{name}:{key}", "real data", "(not run)",
                                  [None] * len(_seeds(size)), reason=why)
                       for key in THRESHOLDS if key.startswith(("gd-multi/", "sgd-batch-size/"))]
    for task in _real_tasks(size):
        name = task["name"]

        def data_of(seed: int, task=task) -> dict[str, Any]:
            return {"standardize": True, **task, "seed": seed}

        rows, results, refs = [], [], []
        for seed in _seeds(size):
            ref = BestRunReference()
            r, res = _multi_runs(out, size, data_of(seed), tag=f"{name}-gd", seed=seed,
                                 reference=ref)
            rows += r
            results += res
            refs.append(ref.path)
        notes.append(f"{name}: gd-multi reference AGOPs (per seed) from {refs}")
        claims += _multi_claims(f"real-{name}:", rows)
        figs.append(_fig_multi(rows, results, out / f"{name}-gd-multi.png",
                               f"{name}: GD with learning-rate raises"))
        tables.append(_write_csv(out / f"{name}-gd-multi.csv", rows))
        ref = BestRunReference()
        brows = _batch_runs(out, size, data_of, tag=f"{name}-sgd", reference=ref)
        notes.append(f"{name}: batch-size reference AGOP (last seed) from {ref.path}")
        bclaims, btable = _batch_claims(f"real-{name}:", brows)
        claims += bclaims
        tables += [_write_csv(out / f"{name}-batch-size-runs.csv", brows),
                   _write_csv(out / f"{name}-batch-size.csv", btable)]
        figs.append(_fig_batch(btable, out / f"{name}-batch-size.png",
                               f"{name}: SGD at 0.8 x the critical rate over batch sizes"))
    return ExperimentResult("real", claims, figs, tables, notes=notes)
