"""The sweep file: what a sweep is (a base config x a grid x explicit trials x seeds), validated.

A sweep file (YAML)::

    base_config: sgd.yaml          # or an inline `base:` mapping (sections data, model, ...)
    grid:                          # dotted field -> list of values; the cartesian product
      train.batch_size: [4, 16, 64]
      train.lr: [0.5, 1.0]
    trials:                        # optional explicit override dicts; with a grid, each trial is
      - {train.optimizer: sgd}     # combined with each grid point (product)
      - {train.optimizer: momentum, train.momentum: 0.5}
    seeds: [0, 1, 2]               # applied to train.seed (each point x each seed)
    metrics:                       # dotted paths into summary.json, aggregated by the report
      - final_test_loss
      - monitors.events.count
    out: runs/sweeps/my-sweep      # optional default sweep directory (--out overrides)

A trial id is derived from its parameters only (``batch_size=4_seed=0-1a2b3c4d``: a readable part
and a hash of the canonical JSON of the parameters), so it is stable across re-runs and does not
depend on the order of the grid. Every trial's config is validated here, before anything is
written.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catapults import runs
from catapults.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    read_yaml,
    set_dotted,
)
from catapults.data import DataError
from catapults.storage.atomic import jsonable

SWEEP_KEYS = ("name", "description", "base", "base_config", "grid", "trials", "seeds", "metrics",
              "out")
DEFAULT_METRICS = ("final_train_loss", "final_test_loss")


# ---- small helpers ----------------------------------------------------------------------------
def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON (sorted keys, no NaN): the basis of trial ids and groupings."""
    return json.dumps(jsonable(obj), sort_keys=True, allow_nan=False)


def get_dotted(obj: Any, key: str) -> Any:
    """``obj['a']['b']`` for ``key='a.b'``; None when a part is missing."""
    for part in key.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{'a.b': value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def format_value(v: Any) -> str:
    """A parameter value as text (None -> 'null', booleans lower case)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


# ---- the sweep file ---------------------------------------------------------------------------
@dataclass
class Trial:
    """One point of a sweep: its parameters (dotted field -> value), seed, id and config."""

    id: str
    params: dict[str, Any]
    seed: int | None
    config: RunConfig

    def label(self) -> str:
        parts = [f"{k}={format_value(v)}" for k, v in self.params.items()]
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return ", ".join(parts) or "(base)"


@dataclass
class Sweep:
    """A validated sweep: the resolved spec and every trial (with a validated config)."""

    source: str
    spec: dict[str, Any]
    trials: list[Trial]
    metrics: list[str]
    swept: list[str]
    out: str | None = None
    base: dict[str, Any] = field(default_factory=dict)

    def default_dir(self) -> Path:
        """The sweep file's ``out``, else ``runs/sweeps/<file stem>``."""
        if self.out is not None:
            return Path(self.out)
        return Path("runs") / "sweeps" / (Path(self.source).stem if self.source != "sweep"
                                          else "sweep")


def trial_id(params: dict[str, Any], seed: int | None) -> str:
    """A stable, file-system-safe id: a readable part and a hash of the canonical parameters."""
    digest = hashlib.sha1(canonical_json({"params": params, "seed": seed}).encode()).hexdigest()[:8]
    parts = [f"{k.split('.')[-1]}={format_value(v)}" for k, v in sorted(params.items())]
    if seed is not None:
        parts.append(f"seed={seed}")
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)).strip("-.")[:80] or "trial"
    return f"{slug}-{digest}"

def _check_key(where: str, key: Any) -> str:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key):
        raise ConfigError(f"{where}: {key!r} is not a dotted field such as train.lr")
    if key.split(".")[0] == "output":
        raise ConfigError(f"{where}: {key}: output fields are set by the sweep")
    if key == "train.seed":
        raise ConfigError(f"{where}: train.seed: list the seeds under `seeds:` instead")
    return key


def expand(spec: dict[str, Any], where: str = "sweep") -> list[tuple[dict[str, Any], int | None]]:
    """The (parameters, seed) of every trial: grid product x explicit trials x seeds, in order."""
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: grid: must be a mapping of dotted field -> list of values")
    for key, values in grid.items():
        _check_key(f"{where}: grid", key)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid.{key}: must be a non-empty list of values")
    explicit = spec.get("trials")
    if explicit is None:
        explicit = [{}]
    if not isinstance(explicit, list) or not explicit:
        raise ConfigError(f"{where}: trials: must be a non-empty list of mappings")
    for i, t in enumerate(explicit):
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: trials[{i}]: must be a mapping of dotted field -> value")
        for key in t:
            _check_key(f"{where}: trials[{i}]", key)
            if key in grid:
                raise ConfigError(f"{where}: trials[{i}].{key}: also in the grid")
    seeds = spec.get("seeds")
    if seeds is None:
        seeds = [None]
    elif (not isinstance(seeds, list) or not seeds
          or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{where}: seeds: must be a non-empty list of integers >= 0")
    elif len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds: repeated seed")
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    out = []
    for t in explicit:
        for p in points:
            for s in seeds:
                out.append(({**t, **p}, s))
    return out


def load_sweep(source: str | Path | dict[str, Any], overrides: Iterable[str] = (), *,
               threads: int | None = None) -> Sweep:
    """Read and validate a sweep (a YAML file or a dict): every trial's config is built and
    validated here; a bad field raises :class:`ConfigError` naming the trial and the field.

    ``overrides`` (``KEY=VALUE``) apply to the base config; ``threads`` sets ``train.threads``
    of every trial (unless the sweep varies it)."""
    if isinstance(source, dict):
        spec, where, root = copy.deepcopy(source), "sweep", Path.cwd()
    else:
        path = Path(source)
        where, root = str(path), path.parent
        spec = read_yaml(path, "sweep file")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a sweep must be a mapping with base/base_config, grid, ...")
    for key in spec:
        if key not in SWEEP_KEYS:
            raise ConfigError(f"{where}: {key}: unknown key (expected one of "
                              f"{', '.join(SWEEP_KEYS)})")
    if "base" in spec and "base_config" in spec:
        raise ConfigError(f"{where}: give base or base_config, not both")
    if "base_config" in spec:
        bpath = Path(str(spec["base_config"]))
        if not bpath.is_absolute():
            bpath = root / bpath
        try:
            base = read_yaml(bpath) or {}
        except ConfigError as err:
            raise ConfigError(f"{where}: base_config: {err}") from None
    else:
        base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base: must be a mapping of sections (data, model, ...)")
    base = apply_overrides(base, list(overrides))
    try:
        config_from_dict(base)
    except ConfigError as err:
        raise ConfigError(f"{where}: base: {err}") from None
    metrics = spec.get("metrics", list(DEFAULT_METRICS))
    if (not isinstance(metrics, list) or not metrics
            or not all(isinstance(m, str) and m for m in metrics)):
        raise ConfigError(f"{where}: metrics: must be a non-empty list of dotted summary keys "
                          "such as final_test_loss or monitors.events.count")
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"{where}: metrics: repeated metric")

    trials: list[Trial] = []
    seen: dict[str, str] = {}
    for params, seed in expand(spec, where):
        tid = trial_id(params, seed)
        raw = copy.deepcopy(base)
        try:
            for key, value in params.items():
                set_dotted(raw, key, copy.deepcopy(value))
            if seed is not None:
                set_dotted(raw, "train.seed", seed)
            if threads is not None and "train.threads" not in params:
                set_dotted(raw, "train.threads", threads)
            set_dotted(raw, "output.progress", False)
            cfg = config_from_dict(raw)
        except ConfigError as err:
            label = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
            raise ConfigError(f"{where}: trial {tid} ({label or 'base'}"
                              f"{'' if seed is None else f', seed={seed}'}): {err}") from None
        if tid in seen:
            raise ConfigError(f"{where}: trial {tid} appears twice (same parameters and seed)")
        seen[tid] = tid
        trials.append(Trial(tid, params, seed, cfg))
    swept = []
    for t in trials:
        swept += [k for k in t.params if k not in swept]
    resolved = {k: v for k, v in spec.items() if k != "base_config"}
    resolved["base"] = base
    return Sweep(where, resolved, trials, list(metrics), swept, spec.get("out"), base)


def check_trials(sweep: Sweep, trials: Iterable[Trial] | None = None) -> None:
    """Check the trials (default: all) as ``catapults run`` would before writing (target, data
    files, batch size against the data, monitors, device; see
    :func:`catapults.runs.check_config`), each data set built once. Raises
    :class:`ConfigError` naming the trial and the field."""
    cache: dict = {}
    for t in sweep.trials if trials is None else trials:
        try:
            runs.check_config(t.config, cache=cache)
        except (ConfigError, DataError) as err:
            raise ConfigError(f"{sweep.source}: trial {t.id} ({t.label()}): {err}") from None

