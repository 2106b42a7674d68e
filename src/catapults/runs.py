"""The composition root: a config becomes data, model, monitors and a trainer, and a run directory.

This is the one place that knows both the config schema (:mod:`catapults.config`) and the parts
it configures; every layer below takes plain arguments. ``catapults run`` is :func:`run`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from catapults import budget
from catapults.config import NTKMonitorConfig, RunConfig, config_from_dict, read_yaml
from catapults.config.model import IMAGE_ARCHS
from catapults.config.model import model_spec as spec_of
from catapults.curvature import agop as agop_lib
from catapults.curvature.agop import Matrix
from catapults.data import Dataset, make_dataset
from catapults.errors import CheckpointError, ConfigError, RunDirError
from catapults.loggers import JSONLinesLogger, Logger, TensorBoardLogger
from catapults.models import build_model, check_outputs
from catapults.monitors import AGOPMonitor, EventsMonitor, NTKMonitor, SharpnessMonitor
from catapults.plotting import plot_training
from catapults.storage.atomic import (
    read_json_object,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from catapults.storage.checkpoint import FORMAT as CHECKPOINT_FORMAT
from catapults.storage.checkpoint import VERSION as CHECKPOINT_VERSION
from catapults.storage.checkpoint import check_resumable, read_checkpoint, save_checkpoint
from catapults.storage.rundir import (
    RUN_MARKER,
    create_run_dir,
    describe_error,
    first_difference,
    is_run_dir,
    metrics_before,
    never_started,
    prepare_run_dir,
    remove_stale_temporaries,
    run_lock,
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


def model_spec(config: RunConfig, data: Dataset) -> dict[str, Any]:
    """The model spec (:func:`catapults.models.build_model`) that ``config`` asks for on ``data``
    (:func:`catapults.config.model.model_spec`); recorded in the run's checkpoint so that the
    model is rebuilt from it. Image architectures need image data: vectors ``(n, d)`` (synthetic
    data) are refused, not reshaped."""
    shape = list(data.X_train.shape[1:])
    arch = config.model.arch
    if arch in IMAGE_ARCHS and len(shape) != 3:
        raise ConfigError(f"model.arch: {arch!r} needs image inputs (n, C, H, W), but data "
                          f"{data.name!r} gives inputs of shape (n, {', '.join(map(str, shape))})"
                          "; use arch 'mlp', or an image data set (digits, mnist, cifar10, ...)")
    return spec_of(config.model, in_shape=shape, out_dim=data.out_dim, seed=config.train.seed,
                   dtype=config.train.dtype)


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
                                   batch=m.ntk.batch, method=m.ntk.method,
                                   kernel_method=m.ntk.kernel_method))
    if m.agop.enabled:
        cfg = m.agop
        X = data.X_train if cfg.n_samples is None else data.X_train[:cfg.n_samples]
        monitors.append(AGOPMonitor(X, reference_agop_for(config, data), every=cfg.every,
                                    centered=cfg.centered, sqrt=cfg.sqrt))
    if m.sharpness.enabled:
        size = min(m.sharpness.probe_size or 256, data.X_train.shape[0])
        monitors.append(SharpnessMonitor(data.X_train[:size], data.y_train[:size],
                                         every=m.sharpness.every,
                                         batch_size=m.sharpness.batch_size,
                                         method=m.sharpness.method,
                                         track_tol=m.sharpness.track_tol,
                                         gauss_newton=m.sharpness.gauss_newton,
                                         loss=config.train.loss))
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
            if not bool(torch.isfinite(ref).all()):
                raise ConfigError(
                    f"data.target: the expected AGOP of {data.target.expression!r} (the AGOP "
                    "monitor's reference) is not finite: its gradient is inf/nan on some "
                    "Monte Carlo samples x ~ N(0, I)")
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
    ``cache`` (a dict) keeps data sets between calls, keyed by their config and dtype. The
    memory the config implies is checked first (:func:`catapults.budget.check`)."""
    budget.check(config)
    device = resolve_device(config.train.device)
    if device.type == "cuda":
        budget.check(config, budget.device_budget(device))
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
    if config.model.arch == "import":
        check_outputs(model, data.X_train[:2], config.model.out_dim or data.out_dim)
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
    and re-raises; a NaN/inf loss ends the run with status ``diverged``. With
    ``output.checkpoint_every`` the run writes resumable checkpoints (:func:`resume`).
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
    with run_lock(out):
        write_text_atomic(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        return _train(config, resolved, out, device, monitors, trainer, t0=t0, resumed_from=[],
                      extra_loggers=loggers)


def _train(config: RunConfig, resolved: dict[str, Any], out: Path, device: torch.device,
           monitors: list, trainer: Trainer, *, t0: float, resumed_from: list[int],
           extra_loggers: list[Logger] | None = None) -> RunResult:
    """Train (from the trainer's step) into the run directory ``out``: metrics rows appended to
    ``metrics.jsonl``, checkpoints every ``output.checkpoint_every`` steps, then the figures,
    the monitors' files, the final checkpoint and ``summary.json``."""
    spec = model_spec(config, trainer.data)
    every = config.output.checkpoint_every
    if every is not None:
        trainer.checkpoint_every = every
        trainer.on_checkpoint = lambda state: save_checkpoint(out / "checkpoint.pt", {
            **_checkpoint_header(), "resumable": True, **state, "model_spec": spec,
            "config": resolved, "resumed_from": resumed_from})
    trainer.loggers = make_loggers(config, out, extra_loggers,
                                   purge_step=resumed_from[-1] if resumed_from else None)
    result = None

    def summary_of(done: Any) -> dict[str, Any]:
        summary = {**done.summary, "device": str(device)}
        if resumed_from:
            summary["resumed_from"] = list(resumed_from)
        return {**summary, "wall_time_s": time.perf_counter() - t0}

    try:
        result = trainer.fit()
        _close(trainer.loggers)
        _finish(config, resolved, out, monitors, result, spec)
        summary = summary_of(result)
        write_json_atomic(out / "summary.json", summary)
    except BaseException as err:  # a crash, Ctrl-C or SIGTERM: a failed run, maybe resumable
        _close(trainer.loggers)
        try:  # with a full disk this may fail too: the first error is the one to report
            if result is not None and _final_checkpoint_written(out / "checkpoint.pt", result):
                write_json_atomic(out / "summary.json", summary_of(result))  # only this was left
                raise
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            write_json_atomic(out / "summary.json", {
                "status": "failed", "reason": status, "error": describe_error(err),
                "wall_time_s": time.perf_counter() - t0})
        except OSError:
            pass
        raise
    return RunResult(out, summary["status"], summary, result.history, result.model)


def _final_checkpoint_written(path: Path, result: Any) -> bool:
    """Whether ``path`` is the final checkpoint of ``result``: then an interruption came after
    everything but the summary was written, and the run is complete (not resumable)."""
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError:
        return False
    return ckpt.get("resumable") is False and ckpt.get("step") == result.steps


def _finish(config: RunConfig, resolved: dict[str, Any], out: Path, monitors: list,
            result: Any, spec: dict[str, Any]) -> None:
    """After training: figures, the monitors' files, the final checkpoint."""
    if config.output.figures:
        plot_training(result.history, out / "figures" / "loss.png",
                      title=f"{config.data.name} / {config.train.optimizer}")
    for m in monitors:
        m.write_artifacts(out, figures=config.output.figures)
    if config.output.checkpoint:
        save_checkpoint(out / "checkpoint.pt", {
            **_checkpoint_header(), "resumable": False,
            "model": result.model.state_dict(), "model_spec": spec, "config": resolved,
            "step": result.steps})
    else:  # the resumable checkpoint is not wanted once the run has finished
        (out / "checkpoint.pt").unlink(missing_ok=True)


# ---- resuming a run -------------------------------------------------------------------------
def _checkpoint_header() -> dict[str, Any]:
    from catapults import __version__

    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "catapults_version": __version__, "torch_version": torch.__version__}


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a job scheduler's preemption) raises ``KeyboardInterrupt`` as
    Ctrl-C does, so a run records itself as interrupted (and, with checkpoints, can be resumed);
    the previous handler comes back afterwards. Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume(run_dir: str | Path, *, callbacks: list | None = None,
           loggers: list[Logger] | None = None, progress: bool | None = None) -> RunResult:
    """Continue the run in ``run_dir``, killed or interrupted, from its last checkpoint (written
    every ``output.checkpoint_every`` steps). The Python face of ``catapults resume``.

    The run ends as the uninterrupted run would have: the same steps (bit for bit on the CPU with
    the same threads), every step's metrics row once (rows from the checkpoint's step on are
    dropped from ``metrics.jsonl`` before training continues), the same figures and summary
    (plus ``resumed_from``, the steps it was resumed at).

    A checkpoint holds: ``format``, ``version`` (of the format), ``catapults_version``,
    ``torch_version``, ``resumable``, ``step`` (the next update), ``model`` (state dict),
    ``model_spec``, ``optimizer`` (state dict), ``schedule`` (the ``critical`` schedule's measured
    rate), ``rng`` (torch CPU and CUDA states), ``batch_order`` (its generator's state, epoch,
    position and the epoch's permutation), ``lr``, ``history`` (every row so far, also those not
    written with ``log_every > 1``), ``callbacks`` (each monitor's state), ``elapsed_s``,
    ``config`` (resolved) and ``resumed_from``; it loads with ``torch.load(weights_only=True)``.

    ``callbacks`` and ``loggers`` are extra monitors and loggers as in :func:`run`; callbacks
    whose state the checkpoint holds must be passed again, in the same order (those with
    ``checkpointed = False`` may differ).

    Raises :class:`RunDirError` (not a run, still going in another process, finished,
    config.yaml unreadable) or :class:`CheckpointError` (none, only the final model, corrupt,
    another version, another config) naming the file, before anything in ``run_dir`` changes.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    if not is_run_dir(run_dir):
        raise RunDirError(f"{run_dir}: not a run directory (it has no {RUN_MARKER} marker "
                          "written by catapults)")
    with run_lock(run_dir):  # refused while the run is still going
        return _resume(run_dir, t0=t0, callbacks=callbacks, loggers=loggers, progress=progress)


def resume_problem(run_dir: str | Path, config: RunConfig | None = None, *,
                   ignore: tuple[str, ...] = ()) -> str | None:
    """Why :func:`resume` would refuse ``run_dir`` (the one-line message), or None when it can
    continue it. With ``config``, the run must also have been started with that config (its
    ``output.dir`` and the dotted fields in ``ignore`` aside, e.g. ``"train.threads"``; a resumed
    run keeps the values it was started with): how a sweep decides to resume a trial rather
    than start it again. Reads only; does not take the run's lock."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not is_run_dir(run_dir):
        return f"{run_dir}: not a run directory"
    try:
        _, resolved, _ = _resumable(run_dir)
    except (RunDirError, CheckpointError) as err:
        return str(err)
    if config is not None:
        wanted = config.to_dict()
        wanted["output"]["dir"] = resolved.get("output", {}).get("dir")
        for dotted in ignore:
            *path, last = dotted.split(".")
            src, dst = resolved, wanted
            for key in path:
                src, dst = (src or {}).get(key), (dst or {}).get(key)
            if isinstance(src, dict) and isinstance(dst, dict) and last in src:
                dst[last] = src[last]
        where = first_difference(wanted, resolved)
        if where is not None:
            return f"{run_dir / 'config.yaml'}: the run was started with another config ({where})"
    return None


def _resume(run_dir: Path, *, t0: float, callbacks: list | None, loggers: list[Logger] | None,
            progress: bool | None) -> RunResult:
    """:func:`resume` of a run directory, holding its lock."""
    config, resolved, ckpt = _resumable(run_dir)
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    device, model, monitors, trainer = _build(config, callbacks=callbacks, progress=progress)
    try:
        trainer.load_state_dict(ckpt)
    except CheckpointError as err:
        raise CheckpointError(f"{run_dir / 'checkpoint.pt'}: {err}") from None
    step = trainer.step
    keep = metrics_before(run_dir / "metrics.jsonl", step)
    # checked: from here on the run directory changes
    remove_stale_temporaries(run_dir)  # half-written files of the killed process
    write_bytes_atomic(run_dir / "metrics.jsonl", keep)
    (run_dir / "summary.json").unlink(missing_ok=True)
    return _train(config, resolved, run_dir, device, monitors, trainer, t0=t0,
                  resumed_from=[*ckpt.get("resumed_from", []), step], extra_loggers=loggers)


def _resumable(run_dir: Path) -> tuple[RunConfig, dict[str, Any], dict[str, Any]]:
    """The config, resolved config dict and checkpoint of a run that can be resumed, else
    :class:`RunDirError` / :class:`CheckpointError` naming the file. Reads only."""
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            status = read_json_object(summary_path).get("status")
        except ConfigError as err:
            raise RunDirError(str(err)) from None
        if status in ("completed", "diverged"):
            raise RunDirError(f"{summary_path}: the run has finished (status {status}); there "
                              "is nothing to resume")
    config_path = run_dir / "config.yaml"
    if never_started(run_dir, check_lock=False):
        raise RunDirError(f"{run_dir}: the run was stopped before it wrote config.yaml, so it "
                          "never started and there is nothing to resume; start it again with "
                          f"`catapults run CONFIG --out {run_dir}` (it reuses the directory, "
                          "no --overwrite needed)")
    try:
        resolved = read_yaml(config_path)
        config = config_from_dict(resolved)
    except ConfigError as err:
        text = str(err)
        raise RunDirError(text if text.startswith(str(config_path))
                          else f"{config_path}: {text}") from None
    except OSError as err:
        raise RunDirError(f"{config_path}: cannot read it: {err.strerror or err}") from None
    ckpt_path = run_dir / "checkpoint.pt"
    every = config.output.checkpoint_every
    if not ckpt_path.is_file():
        raise CheckpointError(
            f"{ckpt_path}: no checkpoint to resume from (the run was started without "
            "output.checkpoint_every)" if every is None else
            f"{ckpt_path}: no checkpoint to resume from (the run stopped before its first "
            f"checkpoint at step {every}); start it again with `catapults run --overwrite`")
    from catapults import __version__

    ckpt = read_checkpoint(ckpt_path)
    check_resumable(ckpt, ckpt_path, resolved, config_path, __version__)
    if not (run_dir / "metrics.jsonl").is_file():
        raise RunDirError(f"{run_dir / 'metrics.jsonl'}: missing, so the rows before step "
                          f"{ckpt['step']} are lost; the run cannot be resumed")
    return config, resolved, ckpt


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
        spec = spec_of(cfg.model, in_shape=[weights[0].shape[1]], out_dim=weights[-1].shape[0],
                       seed=cfg.train.seed, dtype=str(weights[0].dtype).removeprefix("torch."))
    model = build_model(spec)
    model.load_state_dict(state)
    return model, cfg
