"""What the experiments of `catapults reproduce` share: building and training a run, writing a
CSV, the final AGOP alignment and its synthetic reference, reading a run's catapults, saving a
figure, and the size presets (``tiny``, ``quick``, ``full``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import torch

from catapults.config import config_from_dict
from catapults.data import make_dataset
from catapults.experiments.features import feature_metrics
from catapults.runs import RunResult, run
from catapults.storage.atomic import save_figure_atomic, write_text_atomic

SIZES = ("tiny", "quick", "full")


# ---- helpers -------------------------------------------------------------------------------
def _cfg(**sections: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {"output": {"progress": False, "checkpoint": False, "figures": True}}
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    return cfg


def _run(cfg: dict[str, Any], out: Path, callbacks: list | None = None) -> RunResult:
    return run(config_from_dict(cfg), out_dir=out, overwrite=True, callbacks=callbacks)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] = ()) -> Path:
    keys: list[str] = list(columns)
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    write_text_atomic(path, buf.getvalue())
    return path


FEATURES = ("agop_alignment", "agop_sqrt_alignment", "target_trace_share",
            "first_layer_alignment", "first_layer_energy", "energy_target", "energy_other")
"""The feature-learning columns of a run's row (:mod:`catapults.experiments.features`)."""


def _final_features(result: RunResult, reference: torch.Tensor, X: torch.Tensor
                    ) -> dict[str, float | None]:
    """The final model's feature-learning measures against the reference AGOP (all None for a
    run that did not complete: a diverged model has no meaningful AGOP)."""
    if result.status != "completed":
        return dict.fromkeys(FEATURES)
    return feature_metrics(result.model, X, reference)


def _synthetic_reference(data_cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact true AGOP of the target, test inputs) for a synthetic data config."""
    data = make_dataset(config_from_dict({"data": data_cfg}).data)
    return data.target.expected_agop(), data.X_test[:2000]


def _events(result: RunResult) -> dict[str, Any]:
    return result.summary.get("monitors", {}).get("events", {}) or {}


def _read_events(result: RunResult) -> list[dict[str, Any]]:
    path = result.dir / "events.json"
    return json.loads(path.read_text())["events"] if path.is_file() else []


class _Figures:
    """``subplots`` like pyplot's, but on :class:`matplotlib.figure.Figure` objects: no backend
    is selected and pyplot's global state is untouched (a notebook keeps its backend)."""

    @staticmethod
    def subplots(*args: Any, figsize: tuple[float, float] | None = None, **kwargs: Any):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)


def _plt() -> _Figures:
    return _Figures()


def _save(fig, path: Path) -> Path:
    save_figure_atomic(fig, path)
    return path


# ---- sizes ---------------------------------------------------------------------------------
def _seeds(size: str) -> list[int]:
    """The independent repetitions of every claim: 2 (tiny: the tests), 3 (quick), 5 (full).
    Seed ``s`` draws the data (``data.seed``), the initialisation and the batch order
    (``train.seed``)."""
    return {"tiny": [0, 1], "quick": [0, 1, 2], "full": [0, 1, 2, 3, 4]}[size]


def _synthetic(size: str, seed: int = 0) -> dict[str, Any]:
    d = {"tiny": 10, "quick": 20, "full": 100}[size]
    n = {"tiny": 48, "quick": 256, "full": 1024}[size]
    return {"name": "synthetic", "target": "x1*x2", "d": d, "n_train": n,
            "n_test": {"tiny": 200, "quick": 2000, "full": 4000}[size], "seed": seed}


def _width(size: str) -> int:
    return {"tiny": 256, "quick": 1024, "full": 1024}[size]
