"""architectures: gd-multi (multiple catapults from learning-rate raises in full-batch GD) and
sgd-batch-size (SGD over batch sizes at 0.8x the critical rate) for a CNN, a Wide ResNet and a
ViT, in NTK and standard parameterisation, on the real binary tasks of ``real`` (digits 3 vs 8
always; at full size MNIST, Fashion-MNIST, CIFAR-10, SVHN and CelebA when their files are
present, absent ones reported ``not run`` with the reason). Issue 13, "Experiments".

It reuses ``real``'s runs and claims (:func:`~.gd_multi._multi_runs`, :func:`~.gd_multi.
_multi_claims`, :func:`~.sgd_batch_size._batch_runs`, :func:`~.sgd_batch_size._batch_claims`,
the best-run reference AGOP :class:`~.real.BestRunReference`) with the model overridden.
Claim ids are ``ARCH-PARAM:gd-multi/...`` and ``ARCH-PARAM:sgd-batch-size/...`` on digits
(``cnn-ntk:gd-multi/catapults-follow-raises``), ``ARCH-PARAM-SET:...`` on the other sets; the
thresholds are those of gd-multi and sgd-batch-size (:data:`~.claims.THRESHOLDS`, the part after
the ``:``). ``catapults-follow-raises`` per architecture is the check that each architecture
catapults at a learning rate above its critical rate (1.3x the critical rate at every raise);
``ARCH-PARAM-summary.csv`` lists, per run kind, the catapults the lr raises caused.

Models (:data:`MODELS`, small enough for 8x8 digits on a CPU): cnn 2 conv layers of 32
channels, 3x3, 2x2 max pooling, ReLU; wrn WRN-10-1 (GroupNorm); vit patch 2, 1 block, width 16,
2 heads, MLP ratio 2 (GELU). No biases (the package default). For ``cnn`` and ``wrn`` the
first 2-D weight, whose energy the weight-decay control matches (:mod:`.features`), is the
linear head's.

What the sizes shrink against ``real`` (whose runs are MLPs of width 1024 / 512):

- ``quick`` (a budget of about 4-5 min on 2 cores): digits only, ``n_train`` 100 (real: 200);
  gd-multi K = 4 raises (5 levels, unchanged) 30 steps apart, 190 steps (real: 100 apart, 540
  steps); sgd-batch-size batch sizes 2, 4, 8, 16 and the full batch (real: 2, 4, 8, 16, 64, n;
  5 levels are the least the rank correlations accept) for 120 steps (real: 800); standard
  parameterisation for ``vit`` only (the cheapest per step, chosen for cost; cnn and wrn
  standard are reported ``not run``, quick size); 3 seeds (unchanged).
- ``tiny`` (the tests): ``n_train`` 32, raises 12 steps apart (100 steps), batch sizes 4, 8
  and n for 40 steps, no per-run figures, standard parameterisation for vit only, 2 seeds.
- ``full``: ``real``'s full settings (n_train 200 digits, 500 others; raises 150 steps apart;
  batch sizes 2..128 and n for 3000 steps; 5 seeds) for every architecture in both
  parameterisations on every set present.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from catapults.experiments.claims import THRESHOLDS, Claim, ExperimentResult, make_claim
from catapults.experiments.common import _plt, _save, _seeds, _write_csv
from catapults.experiments.gd_multi import _multi_claims, _multi_runs
from catapults.experiments.real import FULL_SIZE_SETS, BestRunReference, _real_tasks
from catapults.experiments.sgd_batch_size import _batch_claims, _batch_runs
from catapults.experiments.units import load_unit, save_unit

ARCHS = ("cnn", "wrn", "vit")
PARAMETERIZATIONS = ("ntk", "standard")

MODELS: dict[str, dict[str, Any]] = {
    "cnn": {"arch": "cnn", "width": 32, "depth": 2, "kernel_size": 3, "pool": "max"},
    "wrn": {"arch": "wrn", "depth": 10, "widen_factor": 1, "norm": "group"},
    "vit": {"arch": "vit", "patch_size": 2, "depth": 1, "width": 16, "heads": 2,
            "mlp_ratio": 2.0},
}
"""The model section of each architecture (the parameterisation is added per run)."""

SETTINGS: dict[str, dict[str, Any]] = {
    "tiny": {"n_train": 32, "gap": 12, "batch_sizes": [4, 8], "batch_steps": 40,
             "standard": ("vit",)},
    "quick": {"n_train": 100, "gap": 30, "batch_sizes": [2, 4, 8, 16], "batch_steps": 120,
              "standard": ("vit",)},
    "full": {"n_train": None, "gap": None, "batch_sizes": None, "batch_steps": None,
             "standard": ARCHS},
}
"""Per size: digits' ``n_train``, the steps between raises, the batch sizes below the full batch,
the steps of a batch-size run (None: ``real``'s at that size), the architectures run in standard
parameterisation (all in NTK parameterisation)."""

KEYS = [k for k in THRESHOLDS if k.startswith(("gd-multi/", "sgd-batch-size/"))]
SUMMARY_KEYS = ("gd-multi/catapults-follow-raises", "gd-multi/test-loss-gain-vs-baseline",
                "sgd-batch-size/catapults-vs-batch")
"""The claims the summary figure shows, one panel each."""


def _tasks(size: str) -> list[dict[str, Any]]:
    tasks = _real_tasks(size)
    n = SETTINGS[size]["n_train"]
    if n is not None:
        tasks = [{**t, "n_train": min(n, t["n_train"])} for t in tasks]
    return tasks


def _prefix(arch: str, par: str, task: str) -> str:
    return f"{arch}-{par}:" if task == "digits" else f"{arch}-{par}-{task}:"


def _not_run(prefix: str, why: str, size: str) -> list[Claim]:
    """The claims of a combination not run, one empty value per seed (as every claim has)."""
    return [make_claim(f"{prefix}{key}", "architectures", "(not run)",
                       [None] * len(_seeds(size)), reason=why) for key in KEYS]


def _raise_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run kind and raise level, over seeds: runs, runs completed, catapults in all, those
    no lr change explains (``spontaneous``), and the runs with at least one catapult an lr
    change caused (catapults - spontaneous > 0): a catapult above the critical rate."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("kind", "raises"), r.get("raises")), []).append(r)
    out = []
    for (kind, k), g in groups.items():
        caused = [(r.get("catapults") or 0) - (r.get("spontaneous") or 0) for r in g]
        out.append({"kind": kind, "raises": k, "runs": len(g),
                    "completed": sum(r["status"] == "completed" for r in g),
                    "catapults": sum(r.get("catapults") or 0 for r in g),
                    "spontaneous": sum(r.get("spontaneous") or 0 for r in g),
                    "runs_with_lr_caused_catapult": sum(c > 0 for c in caused)})
    return out


TABLES = ("gd-multi", "summary", "batch-size-runs", "batch-size")
"""A unit's CSVs, ``STEM-NAME.csv``."""


def _unit_key(size: str, arch: str, par: str, task: dict[str, Any]) -> dict[str, Any]:
    """What a unit's runs depend on (:mod:`.units`): a record with another key is rerun."""
    settings = {k: v for k, v in SETTINGS[size].items() if k != "standard"}
    return {"experiment": "architectures", "size": size,
            "model": {**MODELS[arch], "parameterization": par}, "task": task,
            "seeds": _seeds(size), "settings": settings}


def _one(out: Path, size: str, arch: str, par: str, task: dict[str, Any], *,
         resume: bool = False) -> tuple[list[Claim], list[Path], list[str]]:
    """gd-multi and sgd-batch-size of one architecture, parameterisation and task (one unit:
    with ``resume``, the rows of a finished unit with the same key are read back instead)."""
    stem = f"{arch}-{par}-{task['name']}"
    key = _unit_key(size, arch, par, task)
    got, said = load_unit(out, stem, key, TABLES) if resume else (None, [])
    if got is None:
        rows, brows, notes = _train_unit(out, size, arch, par, task)
    else:
        rows, brows, notes = got["gd-multi"], got["batch-size-runs"], []
    prefix = _prefix(arch, par, task["name"])
    claims = _multi_claims(prefix, rows)
    bclaims, btable = _batch_claims(prefix, brows)
    made = {"gd-multi": rows, "summary": _raise_summary(rows), "batch-size-runs": brows,
            "batch-size": btable}
    tables = {name: _write_csv(out / f"{stem}-{name}.csv", made[name]) for name in TABLES}
    if got is None:
        save_unit(out, stem, key, tables, notes)
    return claims + bclaims, list(tables.values()), said + notes


def _train_unit(out: Path, size: str, arch: str, par: str, task: dict[str, Any]
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """The runs of one unit: gd-multi per seed, then sgd-batch-size; their rows and notes."""
    name, s = task["name"], SETTINGS[size]
    model = {**MODELS[arch], "parameterization": par}
    stem = f"{arch}-{par}-{name}"

    def data_of(seed: int) -> dict[str, Any]:
        return {"standardize": True, **task, "seed": seed}

    rows, refs = [], []
    for seed in _seeds(size):
        ref = BestRunReference()
        r, _ = _multi_runs(out, size, data_of(seed), tag=f"{stem}-gd", seed=seed,
                           reference=ref, model=model, gap=s["gap"],
                           run_figures=size != "tiny")
        rows += r
        refs.append(ref.path)
    ref = BestRunReference()
    brows = _batch_runs(out, size, data_of, tag=f"{stem}-sgd", reference=ref, model=model,
                        steps=s["batch_steps"], batch_sizes=s["batch_sizes"])
    notes = [f"{stem}: gd-multi reference AGOPs (per seed) from {refs}; batch-size reference "
             f"AGOP (last seed) from {ref.path}"]
    return rows, brows, notes


def _fig_summary(claims: list[Claim], path: Path) -> Path:
    """One panel per claim of :data:`SUMMARY_KEYS`: its mean over seeds with the 95% interval
    per architecture and parameterisation (digits), the threshold as a dashed line; not-run
    combinations are left empty."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(SUMMARY_KEYS), figsize=(5 * len(SUMMARY_KEYS), 4.2))
    labels = [f"{a}-{p}" for a in ARCHS for p in PARAMETERIZATIONS]
    by_id = {c.id: c for c in claims}
    for ax, key in zip(axes, SUMMARY_KEYS):
        for i, label in enumerate(labels):
            c = by_id.get(f"{label}:{key}")
            if c is None or c.value is None or c.status == "not run":
                continue
            lo, hi = c.interval if c.interval else (c.value, c.value)
            color = "tab:green" if c.status == "pass" else "tab:red"
            ax.errorbar([i], [c.value], yerr=[[c.value - lo], [hi - c.value]], fmt="o",
                        color=color, capsize=4)
            ax.plot([i] * len(c.per_seed), [math.nan if v is None else v for v in c.per_seed],
                    ".", color="0.5", alpha=0.7)
        ax.axhline(THRESHOLDS[key][1], ls="--", color="k", lw=0.8,
                   label=f"threshold {THRESHOLDS[key][0]} {THRESHOLDS[key][1]:g}")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("digits 3 vs 8: mean over seeds, 95% interval (green pass, red fail), "
                 "seeds as grey dots")
    return _save(fig, path)


def exp_architectures(out: Path, size: str, *, resume: bool = False) -> ExperimentResult:
    """gd-multi and sgd-batch-size for cnn, wrn and vit in NTK and standard parameterisation
    on the real binary tasks present. ``resume``: reuse the units a previous call at this size
    finished (:mod:`.units`; ``catapults reproduce architectures --resume``)."""
    claims, tables, notes = [], [], []
    tasks = _tasks(size)
    if size == "full":
        present = {t["name"] for t in tasks}
        for name in [n for n in FULL_SIZE_SETS if n not in present]:
            why = (f"the {name} files are not present (see `catapults data`); run `make data` "
                   "or set $CATAPULTS_DATA")
            for arch in ARCHS:
                for par in PARAMETERIZATIONS:
                    claims += _not_run(_prefix(arch, par, name), why, size)
    for task in tasks:
        for arch in ARCHS:
            for par in PARAMETERIZATIONS:
                if par == "standard" and arch not in SETTINGS[size]["standard"]:
                    why = (f"{size} size: standard parameterisation is run for "
                           f"{', '.join(SETTINGS[size]['standard'])} only (time budget); "
                           "the full size runs it for every architecture")
                    claims += _not_run(_prefix(arch, par, task["name"]), why, size)
                    continue
                c, t, n = _one(out, size, arch, par, task, resume=resume)
                claims += c
                tables += t
                notes += n
    tables.append(_write_csv(out / "architectures-claims.csv", [
        {"id": c.id, "value": c.value, "interval_low": c.interval[0] if c.interval else None,
         "interval_high": c.interval[1] if c.interval else None, "comparison": c.comparison,
         "threshold": c.threshold, "status": c.status, "n_seeds": c.n_seeds} for c in claims]))
    figs = [_fig_summary(claims, out / "architectures-summary.png")]
    return ExperimentResult("architectures", claims, figs, tables, notes=notes)
