"""The training engine: GD / SGD / momentum / Adam on mean-MSE (or cross-entropy), with learning-
rate schedules, divergence handling, a progress bar and a callback interface for monitors.

Step ``t`` of training takes parameters ``θ_t`` to ``θ_{t+1}``. The metrics row of step ``t``
describes ``θ_t`` (the loss of the batch used by update ``t``, the learning rate ``η_t`` used by it,
and whatever monitors measure before the update), so a row's ``loss`` and ``lr`` are the pair that
decides whether update ``t`` is above the critical learning rate.

Callbacks (:mod:`catapults.training.callbacks`) see each step without the trainer knowing them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from catapults import metrics
from catapults.curvature.spectrum import critical_lr
from catapults.data.tasks import Dataset
from catapults.errors import ConfigError
from catapults.loggers import Logger
from catapults.training.callbacks import Callback, TrainState
from catapults.training.losses import evaluate, get_loss
from catapults.training.optim import make_optimizer, resolve_device
from catapults.training.schedules import make_schedule


@dataclass
class TrainResult:
    status: str  # "completed" | "diverged"
    steps: int
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    model: nn.Module


class Trainer:
    """Train ``model`` on ``data`` as ``config`` says, reporting each step to ``callbacks`` and
    each metrics row to ``sink``.

    Example::

        result = Trainer(model, data, TrainConfig(optimizer="sgd", lr=0.5, batch_size=32,
                                                  steps=2000)).fit()
    """

    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        config: Any,
        *,
        callbacks: Sequence[Callback] = (),
        loggers: Sequence[Logger] = (),
        sink: Callable[[dict[str, Any]], None] | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        self.model = model.to(device=self.device, dtype=dtype)
        self.data = data.to(self.device, dtype)
        self.callbacks = list(callbacks)
        self.loggers = list(loggers)
        self.sink = sink  # a plain callable taking rows, besides the loggers
        self.progress = progress
        if config.loss == "cross_entropy" and data.task != "classification":
            raise ConfigError("train.loss: 'cross_entropy' needs a classification data set")

        n = self.data.X_train.shape[0]
        full = config.optimizer == "gd" or config.batch_size is None
        b = n if full else config.batch_size
        if b > n:
            raise ConfigError(f"train.batch_size: {b} is larger than the training set ({n})")
        self.batch_size = b
        self.steps_per_epoch = n // b if config.drop_last else math.ceil(n / b)
        self.total_steps = config.steps if config.steps is not None else (
            config.epochs * self.steps_per_epoch)
        self.schedule = make_schedule(config.schedule, config.lr, total_steps=self.total_steps,
                                      steps_per_epoch=self.steps_per_epoch)
        self.loss_fn = get_loss(config.loss)
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        sched = config.schedule
        mult = self.steps_per_epoch if sched.unit == "epoch" else 1
        self._critical = ({m * mult: v for m, v in zip(sched.milestones, sched.values)}
                          if sched.kind == "critical" else {})
        self._critical_lr: float | None = None

    def _lr(self, step: int) -> float:
        """The schedule's lr; for 'critical' schedules, re-measure η_crit at each milestone."""
        if not self._critical:
            return self.schedule(step)
        if step in self._critical:
            X = self.data.X_train[:2048]
            self._critical_lr = self._critical[step] * critical_lr(self.model, X)
        base = self._critical_lr if self._critical_lr is not None else self.config.lr
        warm = self.config.schedule.warmup * (
            self.steps_per_epoch if self.config.schedule.unit == "epoch" else 1)
        return base * (step + 1) / warm if step < warm else base

    def _batches(self):
        n = self.data.X_train.shape[0]
        epoch = 0
        while True:
            if self.batch_size == n:
                yield epoch, None
                epoch += 1
                continue
            perm = torch.randperm(n, generator=self.generator)
            for i in range(self.steps_per_epoch):
                idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
                yield epoch, idx.to(self.device)
            epoch += 1

    def fit(self) -> TrainResult:
        cfg, data = self.config, self.data
        classification = data.task == "classification"
        state = TrainState(
            model=self.model, optimizer=self.optimizer, device=self.device,
            dtype=data.X_train.dtype, full_batch=self.batch_size >= data.X_train.shape[0],
            data=data, config=cfg, loss_fn=self.loss_fn, total_steps=self.total_steps,
            batch_size=self.batch_size)
        for cb in self.callbacks:
            cb.on_train_begin(state)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, unit="step", mininterval=0.5, dynamic_ncols=True)
        status, t0 = "completed", time.perf_counter()
        batches = self._batches()
        step = 0
        try:
            for step in range(self.total_steps):
                epoch, idx = next(batches)
                X, y = (data.X_train, data.y_train) if idx is None else (
                    data.X_train[idx], data.y_train[idx])
                record: dict[str, Any] = {"step": step, "epoch": epoch, "lr": state.lr}
                try:  # a schedule or monitor may fail on a diverged model (NaN / inf weights)
                    lr = self._lr(step)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    state.step, state.epoch, state.lr, state.batch_index = step, epoch, lr, idx
                    record["lr"] = lr
                    for cb in self.callbacks:
                        cb.on_step_begin(state, X, y, record)
                except Exception as err:
                    if not self._has_diverged(X, y):
                        raise
                    status = "diverged"
                    record.update(loss=math.nan, diverged_in=f"{type(err).__name__}: {err}")
                    self._emit(state, record, force=True)
                    break

                loss = self.loss_fn(self.model(X), y)
                loss_value = loss.item()
                record["loss"] = loss_value
                evaluate_now = step % cfg.eval_every == 0
                if idx is None:
                    record["train_loss"] = loss_value
                elif evaluate_now:
                    record["train_loss"], _ = evaluate(self.model, data.X_train, data.y_train,
                                                       self.loss_fn, classification=False)
                test_every = cfg.test_every or cfg.eval_every
                if step % test_every == 0 and data.X_test.shape[0] > 0:
                    test_loss, test_err = evaluate(self.model, data.X_test, data.y_test,
                                                   self.loss_fn, classification=classification)
                    record["test_loss"] = test_loss
                    if test_err is not None:
                        record["test_error"] = test_err

                if not math.isfinite(loss_value) or (
                        cfg.max_loss is not None and loss_value > cfg.max_loss):
                    status = "diverged"
                    self._emit(state, record, force=True)
                    break

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                try:
                    for cb in self.callbacks:
                        cb.on_step_end(state, record)
                except Exception as err:
                    if not self._has_diverged(X, y):
                        raise
                    status = "diverged"
                    record["diverged_in"] = f"{type(err).__name__}: {err}"
                    self._emit(state, record, force=True)
                    step += 1
                    break
                self._emit(state, record)
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.4g}", refresh=False)
            else:
                step = self.total_steps
        finally:
            if bar is not None:
                bar.close()

        summary: dict[str, Any] = {"status": status, "steps": step}
        with torch.no_grad():
            train_loss, train_err = evaluate(self.model, data.X_train, data.y_train,
                                             self.loss_fn, classification=classification)
            test_loss, test_err = evaluate(self.model, data.X_test, data.y_test, self.loss_fn,
                                           classification=classification)
        if status == "completed" and not math.isfinite(train_loss):
            status = summary["status"] = "diverged"
        summary.update(final_train_loss=train_loss, final_test_loss=test_loss)
        if classification:
            summary.update(final_train_error=train_err, final_test_error=test_err)
        summary["train_time_s"] = time.perf_counter() - t0
        summary["monitors"] = {}
        state.step = step
        for cb in self.callbacks:
            try:
                cb.on_train_end(state, summary)
            except Exception as err:  # a monitor's final figures of a diverged model
                if status != "diverged":
                    raise
                summary["monitors"][getattr(cb, "name", type(cb).__name__)] = {
                    "error": f"{type(err).__name__}: {err}"}
        return TrainResult(status, step, state.history, summary, self.model)

    def _has_diverged(self, X: Tensor, y: Tensor) -> bool:
        """After a callback failed: are the weights or the loss on (X, y) not finite (or the
        loss above ``max_loss``)? Then the failure is a symptom of divergence."""
        with torch.no_grad():
            if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                return True
            loss = float(self.loss_fn(self.model(X), y))
        limit = self.config.max_loss
        return not math.isfinite(loss) or (limit is not None and loss > limit)

    def _emit(self, state: TrainState, record: dict[str, Any], *, force: bool = False) -> None:
        """Keep every row in memory; write rows on log_every, evaluations and monitor output."""
        state.history.append(record)
        if not self.loggers and self.sink is None:
            return
        if (force or record[metrics.STEP] % self.config.log_every == 0
                or metrics.TEST_LOSS in record or metrics.has_measurement(record)):
            for lg in self.loggers:
                lg.log(record)
            if self.sink is not None:
                self.sink(record)
