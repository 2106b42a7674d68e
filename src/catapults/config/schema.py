"""Run configuration: a validated tree of sections ``data``, ``model``, ``train``, ``monitor``,
``output``.

Every field has a default and a description; ``catapults config show`` prints them all.
Validation errors are raised as :class:`ConfigError`, whose message names the offending field
(``train.lr_typo: unknown field``) so the CLI can print one line and exit with code 2.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from catapults.config.fields import (  # noqa: F401  (re-exported: the schema's vocabulary)
    FLOAT32_MAX,
    MAX_COUNT,
    MAX_SEED,
    _base_types,
    _element_type,
    _Section,
    _strict,
)
from catapults.config.model import ModelConfig, unused_fields


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
class DataConfig(_Section):
    name: Literal[
        "synthetic", "digits", "mnist", "fashion-mnist", "cifar10", "svhn", "celeba"
    ] = Field(
        "synthetic",
        description="Data set. 'synthetic': x ~ N(0, I_d) with a target expression; "
        "'digits': scikit-learn's bundled 8x8 digits (offline); the others are read from "
        "local files under `root` (see `catapults data list`).",
    )
    d: int = Field(100, ge=1, le=100_000, description="Input dimension (synthetic only).")
    target: str = Field(
        "x1*x2",
        description="Synthetic target: a name (product2, product3, ...) or an arithmetic "
        "expression over coordinates x1..xd, e.g. 'x1*x2 + 0.5*x3**2'. Allowed: + - * / **, "
        "numbers, and the functions sin cos tanh exp abs relu sqrt.",
    )
    noise: float = Field(0.0, ge=0.0, description="Std of Gaussian label noise (training set).")
    n_train: int = Field(256, ge=1, le=MAX_COUNT, description="Number of training samples.")
    n_test: int = Field(1000, ge=0, le=MAX_COUNT, description="Number of test samples.")
    classes: list[int] | None = Field(
        None,
        description="Real data: the classes to keep (None = all). Two classes give a binary "
        "task with +-1 targets (first class -> +1) unless `encoding` is 'onehot'.",
    )
    encoding: Literal["auto", "binary", "onehot"] = Field(
        "auto",
        description="Real data targets: 'binary' (+-1, needs exactly two classes), 'onehot', "
        "or 'auto' (binary for two classes, one-hot otherwise).",
    )
    attribute: str = Field(
        "Smiling", description="CelebA only: the attribute that defines the binary task."
    )
    image_size: int | None = Field(
        None, ge=1, description="Real image data: resize to image_size x image_size (None: keep)."
    )
    grayscale: bool = Field(False, description="Real image data: convert to one channel.")
    standardize: bool = Field(
        True, description="Real data: standardise each input feature with training-set mean "
        "and std (stds floored at 10% of their average over features)."
    )
    root: str | None = Field(
        None,
        description="Directory with real data files (default: $CATAPULTS_DATA, else ./data).",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="Seed for sampling the data and the subsets.")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.classes is not None:
            if len(self.classes) < 2:
                raise ValueError("classes: need at least two classes")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError("classes: repeated class")
        if self.encoding == "binary" and self.classes is not None and len(self.classes) != 2:
            raise ValueError("encoding: 'binary' needs exactly two classes")
        return self


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
class ScheduleConfig(_Section):
    kind: Literal["constant", "step", "critical", "warmup", "cosine"] = Field(
        "constant",
        description="'constant'; 'step': lr becomes values[i] at milestones[i]; 'critical': "
        "lr becomes values[i] x the critical lr of the run's optimizer measured at "
        "milestones[i] (n*c/lambda_max(K) for GD/SGD, scaled for momentum, Nesterov and weight "
        "decay, Adam's preconditioned edge after its first step; catapults.stability) "
        "(on up to 2048 training points; induces catapults on purpose); 'warmup': "
        "linear from 0 to lr over warmup steps, then constant; 'cosine': optional warm-up, then "
        "cosine decay from lr to min_lr at the last step.",
    )
    milestones: list[int] = Field(
        default_factory=list,
        description="'step'/'critical': steps (or epochs, see unit) of the changes.")
    values: list[float] = Field(
        default_factory=list,
        description="'step': the learning rates from each milestone on; 'critical': multiples "
        "of the critical learning rate.")
    unit: Literal["step", "epoch"] = Field("step", description="Unit of milestones / warmup.")
    warmup: int = Field(0, ge=0, description="Warm-up length (steps or epochs, see unit).")
    min_lr: float = Field(0.0, ge=0.0, description="'cosine': final learning rate.")

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.kind in ("step", "critical"):
            if len(self.milestones) != len(self.values):
                raise ValueError("milestones and values must have the same length")
            if any(m < 0 for m in self.milestones):
                raise ValueError("milestones must be >= 0")
            if list(self.milestones) != sorted(set(self.milestones)):
                raise ValueError("milestones must be strictly increasing")
            if any(not (v >= 0) for v in self.values):
                raise ValueError("values must be >= 0")
        return self


class TrainConfig(_Section):
    optimizer: Literal["gd", "sgd", "momentum", "adam"] = Field(
        "gd",
        description="'gd': full-batch gradient descent; 'sgd': mini-batch SGD; 'momentum': "
        "(mini-batch) SGD with heavy-ball momentum; 'adam': Adam.",
    )
    lr: float = Field(1.0, gt=0.0, description="Learning rate (base value of the schedule).")
    batch_size: int | None = Field(
        None, ge=1,
        description="Mini-batch size (None: full batch). 'gd' always uses the full batch.",
    )
    drop_last: bool = Field(True, description="Drop the last partial batch of each epoch.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="'momentum': momentum coefficient.")
    nesterov: bool = Field(False, description="'momentum': Nesterov momentum.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="'adam': (beta1, beta2).")
    eps: float = Field(1e-8, gt=0.0, description="'adam': epsilon.")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 weight decay (coupled).")
    steps: int | None = Field(
        None, ge=1, le=MAX_COUNT,
        description="Number of optimiser steps (give steps or epochs, not both).")
    epochs: int | None = Field(None, ge=1, le=MAX_COUNT,
                               description="Number of epochs (passes over the data).")
    loss: Literal["mse", "cross_entropy"] = Field(
        "mse",
        description="'mse': torch.nn.MSELoss(reduction='mean') over all n*c entries "
        "(docs/conventions.md); 'cross_entropy': softmax CE for one-hot targets, logistic loss "
        "for +-1 targets.",
    )
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="Seed for initialisation and batch order.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto': CUDA if present.")
    dtype: Literal["float32", "float64"] = Field("float32", description="Parameter/data dtype.")
    threads: int | None = Field(None, ge=1, le=4096,
                                description="torch CPU threads (None: default).")
    log_every: int = Field(1, ge=1, description="Write a metrics row every this many steps.")
    eval_every: int = Field(
        10, ge=1, description="Evaluate full train loss (SGD) and test loss every this many steps."
    )
    test_every: int | None = Field(
        None, ge=1, description="Evaluate the test loss every this many steps (None: eval_every)."
    )
    max_loss: float | None = Field(
        None, gt=0.0,
        description="Treat a loss above this as divergence (None: only NaN/inf diverges).",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        if self.steps is None and self.epochs is None:
            self.__dict__["steps"] = 1000
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError("betas must lie in [0, 1)")
        if self.dtype == "float32" and self.lr > FLOAT32_MAX:
            raise ValueError(f"lr {self.lr:g} does not fit in float32 (max {FLOAT32_MAX:.3g})")
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov: needs momentum > 0")
        sched = self.schedule
        if self.dtype == "float32" and sched.kind == "step" and any(
                v > FLOAT32_MAX for v in sched.values):
            raise ValueError(f"schedule.values: a learning rate above {FLOAT32_MAX:.3g} does "
                             "not fit in float32")
        if sched.kind == "critical" and any(v > 1e6 for v in sched.values):
            raise ValueError("schedule.values: multiples of the critical rate above 1e6")
        return self


# --------------------------------------------------------------------------------------------
# monitor
# --------------------------------------------------------------------------------------------
class NTKMonitorConfig(_Section):
    enabled: bool = Field(False, description="Track the empirical NTK spectrum during training.")
    every: int = Field(10, ge=1, description="Compute on the probe set every this many steps.")
    k: int = Field(5, ge=1, description="Number of top eigenvalues to track.")
    s: int | None = Field(
        None, ge=1,
        description="Top-eigenspace size for the loss split (None: number of eigenvalues above "
        "the critical level n*c/lr, at least 1; capped at k).",
    )
    probe_size: int | None = Field(
        None, ge=1,
        description="Probe set: the first probe_size training samples (None: all for GD, "
        "min(n, 512) for mini-batch training).",
    )
    batch: bool = Field(
        True, description="Mini-batch training: lambda_max and eta_crit of every batch's kernel."
    )
    method: Literal["auto", "dense", "lanczos"] = Field(
        "auto", description="Eigen-solver on the full (n*c x n*c) kernel: dense (form K), "
        "matrix-free Lanczos (never forms K or J), or auto (dense up to 6000 rows)."
    )
    kernel_method: Literal["auto", "rules", "jacobian", "matvec"] = Field(
        "auto", description="How a dense kernel is computed (catapults.ntk.empirical_ntk's "
        "method): layer rules, per-sample Jacobians, Jacobian-vector products, or auto."
    )


class AGOPMonitorConfig(_Section):
    enabled: bool = Field(False, description="Track AGOP alignment with the true/reference AGOP.")
    every: int = Field(50, ge=1, description="Compute every this many steps (and at the end).")
    n_samples: int | None = Field(
        None, ge=1, description="Samples for the network's AGOP (None: the whole training set)."
    )
    reference_run: str | None = Field(
        None,
        description="Real data: directory of a run whose final model's AGOP is the reference "
        "(a proxy for the unknown true AGOP). Synthetic data: the exact target AGOP is used.",
    )
    centered: bool = Field(False, description="Centre the matrices before the cosine.")
    sqrt: bool = Field(False, description="Compare matrix square roots of the AGOPs.")


class EventsMonitorConfig(_Section):
    """Catapult detection (algorithm: catapults.detect, docs/detector.md)."""

    enabled: bool = Field(False, description="Detect catapults in the loss and write events.json.")
    ratio: float = Field(
        3.0, gt=1.0, description="Absolute minimum height: a spike rises to at least ratio x the "
        "loss level before it, whatever the noise (the bar is also calibrated on the run's noise).")
    min_height: float | None = Field(
        None, gt=1.0, description="The same as `ratio` (its newer name); None: `ratio`. Setting "
        "both to different values is an error.")
    window: int = Field(
        100, ge=1, description="Calm steps whose lowest loss is the baseline (was 20 before the "
        "noise-calibrated detector; 20 is still valid, with its own calibration).")
    return_ratio: float = Field(
        1.5, ge=1.0, description="A spike has ended when the loss is back below this x baseline "
        "(or below the geometric midpoint of baseline and peak).")
    false_positive_rate: float = Field(
        1e-3, ge=1e-4, le=0.1, description="False events per step that noise alone may give: the "
        "bar is calibrated on noise-only curves of the run's noise level to keep within it.")
    confirm_share: float = Field(
        0.5, gt=0.0, le=1.0, description="With the NTK tracked, an event is confirmed when "
        "L_top/L at its peak is at least this and lambda_max is lower after it than before "
        "(confirmed_count in events.json and summary.json).")
    series: Literal["auto", "loss", "train_loss"] = Field(
        "auto", description="Loss series to search: 'loss' (the loss of each step's batch; the "
        "full loss for GD), 'train_loss' (full training loss, every train.eval_every steps: set "
        "eval_every 1 for SGD), or 'auto' ('loss' for full-batch runs, else 'train_loss').")
    warning_window: int = Field(
        5, ge=0, description="Early warning: an event must start within this many steps of a flag."
    )

    @property
    def height(self) -> float:
        """The minimum height in use: ``min_height`` if set, else ``ratio``."""
        return self.min_height if self.min_height is not None else self.ratio

    @model_validator(mode="after")
    def _check(self) -> EventsMonitorConfig:
        if self.min_height is not None and self.min_height != self.ratio:
            if "ratio" in self.model_fields_set:
                raise ValueError("min_height and ratio are the same setting; give one of them")
            self.__dict__["ratio"] = self.min_height  # one value (a resolved config reloads)
        if self.return_ratio >= self.height:
            raise ValueError("return_ratio must be smaller than ratio (min_height)")
        return self


class SharpnessMonitorConfig(_Section):
    """The loss Hessian's sharpness against the optimizer's edge (catapults.stability)."""

    enabled: bool = Field(
        False, description="Track sharpness/hessian (lambda_max of the loss Hessian), "
        "sharpness/gauss_newton, for Adam sharpness/preconditioned, and sharpness/threshold "
        "(the optimizer's edge at the current lr).")
    every: int = Field(10, ge=1, le=10**9, description="Measure every this many steps.")
    probe_size: int | None = Field(
        None, ge=1, le=2**31, description="Probe samples (None: min(n_train, 256)).")
    batch_size: int | None = Field(
        None, ge=1, le=2**31, description="Also the batch sharpness E_B[g^T H_B g / |g|^2] over "
        "random batches of this size from the probe (None: not measured).")
    method: Literal["lanczos", "track"] = Field(
        "lanczos", description="lambda_max(H) by warm-started Lanczos to the dtype's precision, "
        "or 'track': one Hessian-vector product per measurement (Rayleigh quotient and a power "
        "step, re-solved when the residual exceeds track_tol): for measuring every step.")
    track_tol: float = Field(0.05, gt=0.0, lt=1.0, description="'track': the relative residual "
                             "above which a Lanczos solve replaces the power step.")
    gauss_newton: bool = Field(True, description="Also record sharpness/gauss_newton (a dense "
                               "kernel on the probe each measurement).")


class MonitorConfig(_Section):
    ntk: NTKMonitorConfig = Field(default_factory=NTKMonitorConfig)
    agop: AGOPMonitorConfig = Field(default_factory=AGOPMonitorConfig)
    events: EventsMonitorConfig = Field(default_factory=EventsMonitorConfig)
    sharpness: SharpnessMonitorConfig = Field(default_factory=SharpnessMonitorConfig)


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
class OutputConfig(_Section):
    dir: str = Field("runs/run", description="Run directory (the CLI's --out overrides it).")
    overwrite: bool = Field(False, description="Replace an existing run directory.")
    figures: bool = Field(True, description="Write figures/*.png at the end.")
    checkpoint: bool = Field(True, description="Write checkpoint.pt at the end.")
    tensorboard: bool = Field(
        False, description="Also write the metrics as TensorBoard event files under "
        "RUN/tensorboard (needs the tensorboard package).")
    checkpoint_every: int | None = Field(
        None, ge=1,
        description="Also write a resumable checkpoint.pt (model, optimizer, schedule, RNG and "
        "batch order, history, monitors) every this many steps, for `catapults resume RUN` "
        "(None: only the final checkpoint).",
    )
    progress: bool = Field(True, description="Show a progress bar.")


class RunConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _ntk_form_needs_mse(self) -> RunConfig:
        """The critical schedule and the NTK monitor use the NTK form of the critical rate and
        the loss split, which hold for the mean MSE only."""
        if self.train.loss == "mse":
            return self
        why = (f"holds for train.loss 'mse' only, not {self.train.loss!r}; for that loss only "
               "the Hessian form applies (monitor.sharpness records lambda_max(H) against the "
               "optimizer's threshold)")
        if self.train.schedule.kind == "critical":
            raise ValueError("train.schedule.kind: 'critical' sets the lr from the NTK form "
                             f"n*c/lambda_max(K), which {why}; use a 'step' schedule")
        if self.monitor.ntk.enabled:
            raise ValueError("monitor.ntk.enabled: the NTK monitor's critical rates and loss "
                             f"split are the NTK form, which {why}")
        return self

    @model_validator(mode="after")
    def _fits_dtype(self) -> RunConfig:
        if self.train.dtype == "float32":
            for name, value in [("data.noise", self.data.noise),
                                ("model.bias_scale", self.model.bias_scale)]:
                if value is not None and value > FLOAT32_MAX:
                    raise ValueError(f"{name}: {value:g} does not fit in float32 (train.dtype)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-safe dict of every field (defaults included), except the model fields
        that the chosen ``model.arch`` does not use (always None) and ``model.linearize`` when
        false: an MLP's resolved config reads as it did before other architectures existed."""
        out = self.model_dump(mode="json")
        out["model"] = {k: v for k, v in out["model"].items() if k not in unused_fields(
            self.model.arch)}
        if not self.model.linearize:  # shown only when set, like the other optional fields
            out["model"].pop("linearize", None)
        return out
