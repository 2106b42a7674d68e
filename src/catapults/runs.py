"""The composition root: a config becomes data, model, monitors and a trainer, and a run directory.

This is the one place that knows both the config schema (:mod:`catapults.config`) and the parts
it configures; every layer below takes plain arguments. ``catapults run`` is :func:`run`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from catapults.config import NTKMonitorConfig, RunConfig, config_from_dict
from catapults.curvature import agop as agop_lib
from catapults.curvature.agop import Matrix
from catapults.data import Dataset, make_dataset
from catapults.errors import ConfigError
from catapults.loggers import JSONLinesLogger, Logger, TensorBoardLogger
from catapults.models import build_model
from catapults.monitors import AGOPMonitor, EventsMonitor, NTKMonitor
from catapults.plotting import plot_training
from catapults.storage.atomic import save_torch_atomic, write_json_atomic, write_text_atomic
from catapults.storage.rundir import (
    create_run_dir,
    describe_error,
    prepare_run_dir,
)
from catapults.training import Callback, Trainer, resolve_device


@dataclass
class RunResult:
    """What :func:`run` returns: the run directory, its summary and the trained model."""

    dir: Path
    status: str
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    model: torch.nn.Module


def _spec_from_config(config: RunConfig, in_dim: int, out_dim: int, dtype: str) -> dict[str, Any]:
    spec = config.model.model_dump(mode="json")
    spec.pop("out_dim")
    return {**spec, "in_dim": in_dim, "out_dim": config.model.out_dim or out_dim,
            "seed": config.train.seed, "dtype": dtype}


def model_spec(config: RunConfig, data: Dataset) -> dict[str, Any]:
    """The model spec (:func:`catapults.models.build_model`) that ``config`` asks for on ``data``;
    recorded in the run's checkpoint so that the model is rebuilt from it."""
    return _spec_from_config(config, data.in_dim, data.out_dim, config.train.dtype)


# ---- monitors from the config ----------------------------------------------------------------
def _probe(cfg: NTKMonitorConfig, data: Dataset, full_batch: bool) -> tuple[Tensor, Tensor]:
    n = data.X_train.shape[0]
    size = cfg.probe_size or (n if full_batch else min(n, 512))
    size = min(size, n)
    return data.X_train[:size], data.y_train[:size]


def build_monitors(config: RunConfig, data: Dataset) -> list[Callback]:
    """The monitors enabled in ``config.monitor``, validated against ``data``."""
    monitors: list[Callback] = []
    m = config.monitor
    full_batch = config.train.optimizer == "gd" or config.train.batch_size is None
    if m.ntk.enabled:
        X, y = _probe(m.ntk, data, full_batch)
        monitors.append(NTKMonitor(X, y, k=m.ntk.k, every=m.ntk.every, s=m.ntk.s,
                                   batch=m.ntk.batch, method=m.ntk.method))
    if m.agop.enabled:
        cfg = m.agop
        X = data.X_train if cfg.n_samples is None else data.X_train[:cfg.n_samples]
        monitors.append(AGOPMonitor(X, reference_agop_for(config, data), every=cfg.every,
                                    centered=cfg.centered, sqrt=cfg.sqrt))
    if m.events.enabled:
        monitors.append(EventsMonitor(ratio=m.events.height, window=m.events.window,
                                      return_ratio=m.events.return_ratio,
                                      warning_window=m.events.warning_window,
                                      false_positive_rate=m.events.false_positive_rate,
                                      confirm_share=m.events.confirm_share,
                                      series=m.events.series if m.events.series != "auto"
                                      else ("loss" if full_batch else "train_loss")))
    return monitors


def reference_agop_for(config: RunConfig, data: Dataset) -> Matrix:
    """The reference AGOP for ``config.monitor.agop`` on ``data``.

    - ``monitor.agop.reference_run`` set: the AGOP of that run's final model
      (:func:`catapults.runs.load_run_model`) on ``data.X_train``, a :class:`FactoredAGOP`
      (the ``d × d`` matrix is formed later only if that is cheaper). A documented proxy.
    - else, synthetic data with a known target: ``data.target.expected_agop()`` (exact, ``d × d``,
      float64).
    - else: :class:`~catapults.config.ConfigError` (``monitor.agop.reference_run: ...``).
    """
    cfg = config.monitor.agop
    d = data.in_dim
    if cfg.reference_run is None:
        if data.target is not None and hasattr(data.target, "expected_agop"):
            ref = data.target.expected_agop()
            if tuple(ref.shape) != (d, d):
                raise ConfigError(f"monitor.agop: the target's AGOP is {tuple(ref.shape)}, "
                                  f"expected ({d}, {d})")
            return ref
        raise ConfigError(
            f"monitor.agop.reference_run: data set {data.name!r} has no known target function, "
            "so its true AGOP is unknown; give the directory of a finished run (with "
            "checkpoint.pt) whose final model's AGOP serves as the reference (a proxy)")
    path = Path(cfg.reference_run).expanduser()
    if not path.is_dir():
        raise ConfigError(f"monitor.agop.reference_run: {path} is not a directory (give the "
                          "directory of a finished run)")
    try:
        model, _ = load_run_model(path)
    except ConfigError as err:
        raise ConfigError(f"monitor.agop.reference_run: {err}") from None
    except Exception as err:  # corrupt checkpoint, mismatched config, ...
        raise ConfigError(f"monitor.agop.reference_run: cannot load the model of {path}: "
                          f"{type(err).__name__}: {err}") from None
    in_dim = getattr(model, "in_dim", None)
    if in_dim is not None and in_dim != d:
        raise ConfigError(f"monitor.agop.reference_run: the model of {path} takes inputs of size "
                          f"{in_dim}, but this data set's inputs have size {d}")
    model = model.eval().to(dtype=data.X_train.dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        return agop_lib.agop_factor(model, data.X_train)
    except (agop_lib.AGOPError, RuntimeError) as err:
        raise ConfigError(f"monitor.agop.reference_run: cannot compute the AGOP of the model of "
                          f"{path} on this data: {err}") from None


# ---- a run ----------------------------------------------------------------------------------
def _build(config: RunConfig, *, callbacks: list | None = None, progress: bool | None = None,
           cache: dict | None = None) -> tuple[Any, torch.nn.Module, list, Any]:
    """Everything a run needs, each part validated: (device, model, monitors, trainer).
    ``cache`` (a dict) keeps data sets between calls, keyed by their config and dtype."""
    device = resolve_device(config.train.device)
    dtype = torch.float64 if config.train.dtype == "float64" else torch.float32
    key = (json.dumps(config.to_dict()["data"], sort_keys=True), str(dtype))
    if cache is not None and key in cache:
        data = cache[key]
    else:
        data = make_dataset(config.data, dtype=dtype)
        if cache is not None:
            cache[key] = data
    if (config.model.out_dim or data.out_dim) != data.out_dim:
        raise ConfigError(f"model.out_dim: {config.model.out_dim} does not match the targets' "
                          f"dimension {data.out_dim}")
    model = build_model(model_spec(config, data))
    if config.output.tensorboard:
        TensorBoardLogger.check_available()
    monitors = build_monitors(config, data) + list(callbacks or [])
    show = config.output.progress if progress is None else progress
    trainer = Trainer(model, data, config.train, callbacks=monitors, progress=show, device=device)
    return device, model, monitors, trainer


def check_config(config: RunConfig, *, cache: dict | None = None) -> None:
    """Check everything ``run`` checks before it writes (data files and target, model, monitors
    and their references, batch size against the data, device) without training or writing.
    Raises :class:`ConfigError` (or ``DataError``) naming the field or file. ``cache``: a dict
    to keep the data sets in, when checking many configs."""
    _build(config, progress=False, cache=cache)


def make_loggers(config: RunConfig, out: Path, extra: list[Logger] | None = None,
                 *, purge_step: int | None = None) -> list[Logger]:
    """The run's loggers: ``metrics.jsonl`` always, TensorBoard event files under
    ``out/tensorboard`` with ``output.tensorboard``, then ``extra`` (the caller's own)."""
    loggers: list[Logger] = [JSONLinesLogger(out / "metrics.jsonl")]
    if config.output.tensorboard:
        loggers.append(TensorBoardLogger(out / "tensorboard", purge_step=purge_step))
    return loggers + list(extra or [])


def _close(loggers: list[Logger]) -> None:
    for lg in loggers:
        lg.close()


def run(config: RunConfig, *, out_dir: str | Path | None = None,
        overwrite: bool | None = None, callbacks: list | None = None,
        loggers: list[Logger] | None = None, progress: bool | None = None) -> RunResult:
    """Train as ``config`` says and write a run directory. The Python face of ``catapults run``.

    ``callbacks`` are extra monitors (:class:`catapults.training.Callback`); ``loggers`` extra
    :class:`catapults.loggers.Logger` objects that receive every logged row besides the run's
    own ``metrics.jsonl`` (and TensorBoard files with ``output.tensorboard``).

    Everything that can be validated (output directory, data, model, monitors) is checked before
    the first file is written. A training crash leaves ``summary.json`` with status ``failed``
    and re-raises; a NaN/inf loss ends the run with status ``diverged``.
    """
    t0 = time.perf_counter()
    overwrite = config.output.overwrite if overwrite is None else overwrite
    out = prepare_run_dir(out_dir if out_dir is not None else config.output.dir,
                          overwrite=overwrite)
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    device, model, monitors, trainer = _build(config, callbacks=callbacks, progress=progress)

    out = create_run_dir(out, overwrite=overwrite)
    resolved = config.to_dict()
    resolved["output"]["dir"] = str(out)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    trainer.loggers = make_loggers(config, out, loggers)
    try:
        result = trainer.fit()
    except BaseException as err:
        _close(trainer.loggers)
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        write_json_atomic(out / "summary.json", {
            "status": "failed", "reason": status, "error": describe_error(err),
            "wall_time_s": time.perf_counter() - t0})
        raise
    _close(trainer.loggers)
    summary = dict(result.summary)
    summary["device"] = str(device)
    if config.output.figures:
        plot_training(result.history, out / "figures" / "loss.png",
                      title=f"{config.data.name} / {config.train.optimizer}")
    for m in monitors:
        m.write_artifacts(out, figures=config.output.figures)
    if config.output.checkpoint:
        save_torch_atomic(out / "checkpoint.pt", {
            "model": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
            "model_spec": model_spec(config, trainer.data), "config": resolved,
            "step": result.steps})
    summary["wall_time_s"] = time.perf_counter() - t0
    write_json_atomic(out / "summary.json", summary)
    return RunResult(out, summary["status"], summary, result.history, result.model)


def load_run_model(
    run_dir: str | Path, *, map_location: str = "cpu"
) -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild a run's final model from ``checkpoint.pt`` and its ``config.yaml``."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise ConfigError(f"{ckpt_path}: no checkpoint (is {run_dir} a finished run?)")
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    cfg = config_from_dict(ckpt["config"])
    state = ckpt["model"]
    spec = ckpt.get("model_spec")
    if spec is None:  # a run written before model specs were recorded: an MLP
        weights = [v for k, v in state.items() if k.endswith("weight")]
        spec = _spec_from_config(cfg, weights[0].shape[1], weights[-1].shape[0],
                                 str(weights[0].dtype).removeprefix("torch."))
    model = build_model(spec)
    model.load_state_dict(state)
    return model, cfg
