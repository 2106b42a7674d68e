"""Runs on disk: one directory per training run, written crash-safely.

Layout::

    RUN/.catapults-run   the marker that makes RUN a run directory (only those are replaced)
    RUN/config.yaml      the fully resolved config (every field)
    RUN/metrics.jsonl    one JSON object per logged step, appended and flushed during training
    RUN/summary.json     status (completed | diverged | failed), final losses, wall time, monitors
    RUN/figures/*.png    figures
    RUN/checkpoint.pt    {"model": state_dict, "config": dict, "step": int} at the end

Every file except ``metrics.jsonl`` is written under a temporary name and renamed, so a reader
never sees half a file. An existing run directory is only replaced with ``overwrite=True``, and
only if it holds the marker; the new run is created beside it and swapped in.
Non-finite floats are written as ``null`` (strict JSON).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from catapults.config import ConfigError, RunConfig


class RunExistsError(ConfigError):
    """The run directory exists and overwrite was not asked for."""


# ---- atomic writing -------------------------------------------------------------------------
def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def jsonable(obj: Any) -> Any:
    """Make ``obj`` strict-JSON safe: tensors to lists, non-finite floats to None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def describe_error(err: BaseException) -> str:
    """``'Type: message'`` for a run's summary; an interrupt says what it was."""
    if isinstance(err, KeyboardInterrupt):
        return "KeyboardInterrupt: stopped by Ctrl-C or SIGTERM"
    return f"{type(err).__name__}: {err}"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def save_torch_atomic(path: str | Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def save_figure_atomic(fig, path: str | Path, **kwargs) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=kwargs.pop("dpi", 120), bbox_inches="tight", **kwargs)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


class MetricsFile:
    """Append-only ``metrics.jsonl``: one strict-JSON object per line, flushed on every write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "a", buffering=1)

    def __call__(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(jsonable(record), allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (a torn last line, from a crash, is skipped)."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "a number", float: "a number", type(None): "null"}


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`ConfigError` naming the file if it is not one."""
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: corrupt or truncated JSON ({err.msg}: line {err.lineno} "
                          f"column {err.colno})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not JSON (binary data)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {_JSON_TYPES[type(data)]}")
    return data


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``summary.json``; :class:`ConfigError` naming the file if it is not an object."""
    return read_json_object(Path(run_dir) / "summary.json")


# ---- a run ----------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What :func:`run` returns: the run directory, its summary and the trained model."""

    dir: Path
    status: str
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    model: torch.nn.Module


def check_output_path(path: str | Path, what: str, *, directory: bool = True) -> Path:
    """Raise :class:`ConfigError` (naming ``what``) unless ``path`` can be written as an output
    directory (or, with ``directory=False``, a file): not an existing file (directory), and its
    nearest existing ancestor is a directory this process can write in. Writes nothing."""
    p = Path(path)
    if directory and p.exists() and not p.is_dir():
        raise ConfigError(f"{what}: {p} exists and is not a directory")
    if not directory and p.is_dir():
        raise ConfigError(f"{what}: {p} is a directory")
    anc = p if p.is_dir() else p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{what}: cannot create {p}: {anc} is not a directory")
    try:  # as root os.access says yes to everything: try it
        os.rmdir(tempfile.mkdtemp(prefix=".catapults-check-", dir=anc))
    except OSError as err:
        raise ConfigError(f"{what}: cannot create {p}: {anc}: "
                          f"{err.strerror or err}") from None
    return p


RUN_MARKER = ".catapults-run"
"""The file that marks a directory as a run written by this toolkit. ``overwrite`` replaces
only directories that hold it (never a directory that merely contains a ``config.yaml``)."""


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory written by catapults (it holds :data:`RUN_MARKER`)."""
    return (Path(path) / RUN_MARKER).is_file()


def prepare_run_dir(out: str | Path, *, overwrite: bool) -> Path:
    """Check that ``out`` may be written, else raise :class:`RunExistsError` (or
    :class:`ConfigError`). Writes nothing.

    ``out`` may be absent or an empty directory. An existing non-empty directory is replaced only
    with ``overwrite=True`` and only if it is a run directory (:func:`is_run_dir`), and never
    when it is the current directory or contains it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output.dir: {out} exists and is not a directory")
    if not out.exists():
        return out
    here, target = Path.cwd().resolve(), out.resolve()
    if target == here or target in here.parents:
        raise ConfigError(f"output.dir: {out} is the current directory or contains it; "
                          "overwrite replaces only run directories")
    empty = not any(out.iterdir())
    if empty:
        return out
    if not overwrite:
        raise RunExistsError(
            f"output.dir: {out} already exists (pass overwrite=True, or --overwrite on the "
            "command line, to replace it)")
    if not is_run_dir(out):
        raise ConfigError(f"output.dir: {out} is not a run directory (it has no {RUN_MARKER} "
                          "marker written by catapults), so overwrite will not delete it; "
                          "choose another directory")
    return out


def create_run_dir(out: str | Path, *, overwrite: bool) -> Path:
    """Create the run directory ``out`` holding :data:`RUN_MARKER`, after
    :func:`prepare_run_dir`'s checks.

    The new directory is made beside ``out`` (same parent) with its marker and only then swapped
    in, so ``out`` is never a directory without a marker, and an old run is removed only once the
    new one exists: a parent that cannot be written leaves the old run untouched. Raises
    :class:`ConfigError` naming the directory on an OS error."""
    out = prepare_run_dir(out, overwrite=overwrite)
    old: Path | None = None
    staging: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
        write_json_atomic(staging / RUN_MARKER, {"kind": "run", "created": time.time()})
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "run")
        try:
            os.replace(staging, out)
        except OSError:
            if old is not None:  # put the old run back
                os.replace(old / "run", out)
            raise
        staging = None
    except OSError as err:
        raise ConfigError(f"output.dir: cannot create {out}: "
                          f"{err.strerror or err}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def _build(config: RunConfig, *, callbacks: list | None = None, progress: bool | None = None,
           cache: dict | None = None) -> tuple[Any, torch.nn.Module, list, Any]:
    """Everything a run needs, each part validated: (device, model, monitors, trainer).
    ``cache`` (a dict) keeps data sets between calls, keyed by their config and dtype."""
    from catapults.data import make_dataset
    from catapults.models import build_model
    from catapults.monitors import build_monitors
    from catapults.training import Trainer, resolve_device

    device = resolve_device(config.train.device)
    dtype = torch.float64 if config.train.dtype == "float64" else torch.float32
    key = (json.dumps(config.to_dict()["data"], sort_keys=True), str(dtype))
    if cache is not None and key in cache:
        data = cache[key]
    else:
        data = make_dataset(config.data, dtype=dtype)
        if cache is not None:
            cache[key] = data
    model = build_model(config.model, in_dim=data.in_dim, out_dim=data.out_dim,
                        seed=config.train.seed, dtype=dtype)
    if (config.model.out_dim or data.out_dim) != data.out_dim:
        raise ConfigError(f"model.out_dim: {config.model.out_dim} does not match the targets' "
                          f"dimension {data.out_dim}")
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


def run(config: RunConfig, *, out_dir: str | Path | None = None,
        overwrite: bool | None = None, callbacks: list | None = None,
        progress: bool | None = None) -> RunResult:
    """Train as ``config`` says and write a run directory. The Python face of ``catapults run``.

    Everything that can be validated (output directory, data, model, monitors) is checked before
    the first file is written. A training crash leaves ``summary.json`` with status ``failed``
    and re-raises; a NaN/inf loss ends the run with status ``diverged``.
    """
    from catapults.reporting import plot_training

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
    metrics = MetricsFile(out / "metrics.jsonl")
    trainer.sink = metrics
    try:
        result = trainer.fit()
    except BaseException as err:
        metrics.close()
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        write_json_atomic(out / "summary.json", {
            "status": "failed", "reason": status, "error": describe_error(err),
            "wall_time_s": time.perf_counter() - t0})
        raise
    metrics.close()
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
            "config": resolved, "step": result.steps})
    summary["wall_time_s"] = time.perf_counter() - t0
    write_json_atomic(out / "summary.json", summary)
    return RunResult(out, summary["status"], summary, result.history, result.model)


def load_run_model(
    run_dir: str | Path, *, map_location: str = "cpu"
) -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild a run's final model from ``checkpoint.pt`` and its ``config.yaml``."""
    from catapults.config import config_from_dict
    from catapults.models import build_model

    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise ConfigError(f"{ckpt_path}: no checkpoint (is {run_dir} a finished run?)")
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    cfg = config_from_dict(ckpt["config"])
    state = ckpt["model"]
    weights = [v for k, v in state.items() if k.endswith("weight")]
    in_dim, out_dim = weights[0].shape[1], weights[-1].shape[0]
    dtype = weights[0].dtype
    model = build_model(cfg.model, in_dim=in_dim, out_dim=out_dim, seed=0, dtype=dtype)
    model.load_state_dict(state)
    return model, cfg
