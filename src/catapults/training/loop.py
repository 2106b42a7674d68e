"""The training engine: GD / SGD / momentum / Adam on mean-MSE (or cross-entropy), with learning-
rate schedules, divergence handling, a progress bar and a callback interface for monitors.

Step ``t`` of training takes parameters ``θ_t`` to ``θ_{t+1}``. The metrics row of step ``t``
describes ``θ_t`` (the loss of the batch used by update ``t``, the learning rate ``η_t`` used by it,
and whatever monitors measure before the update), so a row's ``loss`` and ``lr`` are the pair that
decides whether update ``t`` is above the critical learning rate.

Callbacks (:mod:`catapults.training.callbacks`) see each step without the trainer knowing them.

Resuming: :meth:`Trainer.state_dict` is everything needed to continue before the next update
(model, optimizer, the critical schedule's rate, the RNG states and the batch order, the
history, the callbacks' states); :meth:`Trainer.load_state_dict` then :meth:`Trainer.fit`
continue from it. The batch of update ``t`` depends only on the batch-order generator and the
current epoch's permutation (:meth:`Trainer._batch`), so the order continues exactly.
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
from catapults.curvature.stability import adam_started, critical_lr, optimizer_edge
from catapults.data.tasks import Dataset
from catapults.errors import CheckpointError, ConfigError
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

    With ``checkpoint_every`` and ``on_checkpoint``, after every ``checkpoint_every``-th update
    ``on_checkpoint(trainer.state_dict())`` is called (the state before the next update); a new
    trainer built the same way continues from it with :meth:`load_state_dict` and :meth:`fit`,
    giving the same steps (bit for bit on the CPU) as an uninterrupted run.

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
        checkpoint_every: int | None = None,
        on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
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
        # where fit() starts, and what a loaded state (load_state_dict) hands to it
        self.step = 0
        self.checkpoint_every, self.on_checkpoint = checkpoint_every, on_checkpoint
        self._perm: Tensor | None = None  # the current epoch's batch order
        self._history: list[dict[str, Any]] = []
        self._rng: dict[str, Any] | None = None
        self._last_lr, self._elapsed = 0.0, 0.0
        self._state: TrainState | None = None  # the callbacks' view, once fit() has begun

    def _lr(self, step: int) -> float:
        """The schedule's lr; for 'critical' schedules, re-measure η_crit at each milestone."""
        if not self._critical:
            return self.schedule(step)
        if step in self._critical:
            X = self.data.X_train[:2048]
            self._critical_lr = self._critical[step] * self._edge(X)
        base = self._critical_lr if self._critical_lr is not None else self.config.lr
        warm = self.config.schedule.warmup * (
            self.steps_per_epoch if self.config.schedule.unit == "epoch" else 1)
        return base * (step + 1) / warm if step < warm else base

    def _edge(self, X: Tensor) -> float:
        """The critical rate of the run's own optimizer (catapults.stability): GD's
        ``n·c/λ_max(K)``, scaled for momentum / Nesterov / weight decay, Adam's preconditioned
        edge once it has second moments (before its first step, GD's edge: Adam's first steps
        are not its linearised dynamics)."""
        opt = self.optimizer
        if optimizer_edge(opt)["kind"] == "adam" and not adam_started(opt):
            opt = None
        return critical_lr(self.model, X, opt)

    def _batch(self, step: int) -> tuple[int, Tensor | None]:
        """The epoch of update ``step`` and its batch indices (None: the full batch).

        Each epoch draws one permutation from the batch-order generator at its first step and
        takes ``steps_per_epoch`` consecutive slices of it. One batch per step, so the position
        inside the epoch is ``step % steps_per_epoch``: a resumed run that restores the
        generator and the current permutation continues the batch order exactly."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if self.batch_size == self.data.X_train.shape[0]:
            return epoch, None
        if position == 0 or self._perm is None:
            self._perm = torch.randperm(self.data.X_train.shape[0], generator=self.generator)
        b = self.batch_size
        return epoch, self._perm[position * b:(position + 1) * b].to(self.device)

    def fit(self) -> TrainResult:
        """Train from :attr:`step` (0, or the step of a state given to :meth:`load_state_dict`)
        to ``total_steps``, or until the loss diverges."""
        state = self._begin()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", mininterval=0.5,
                       dynamic_ncols=True)
        status, t0 = "completed", time.perf_counter() - self._elapsed
        step = self.step
        try:
            for step in range(self.step, self.total_steps):
                done = self._step(state, step)
                if done is not None:  # diverged after ``done`` updates
                    status, step = "diverged", done
                    break
                self.step = step + 1
                if self._checkpoint_due(step + 1):
                    self._elapsed = time.perf_counter() - t0
                    self.on_checkpoint(self.state_dict())
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix(loss=f"{state.history[-1]['loss']:.4g}",
                                        lr=f"{state.lr:.4g}", refresh=False)
            else:
                step = self.total_steps
        finally:
            if bar is not None:
                bar.close()
        return self._end(state, status, step, t0)

    def _begin(self) -> TrainState:
        """The callbacks' view of training, after their ``on_train_begin``; for a resumed run
        with the loaded history, last learning rate and random-number states."""
        data = self.data
        state = TrainState(
            model=self.model, optimizer=self.optimizer, device=self.device,
            dtype=data.X_train.dtype, full_batch=self.batch_size >= data.X_train.shape[0],
            data=data, config=self.config, loss_fn=self.loss_fn, total_steps=self.total_steps,
            batch_size=self.batch_size, history=list(self._history))
        state.step, state.lr = self.step, self._last_lr
        state.epoch = self.step // self.steps_per_epoch
        self._state = state
        self.model.eval()  # measurements in eval mode, updates in training mode (see _step)
        for cb in self.callbacks:
            cb.on_train_begin(state)
        if self._rng is not None:  # after on_train_begin, as in the run that was checkpointed
            torch.set_rng_state(self._rng["torch"])
            if self._rng.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state_all(self._rng["cuda"])
            self._rng = None
        return state

    def _step(self, state: TrainState, step: int) -> int | None:
        """Update ``step``: its metrics row (at θ_t), the update, the callbacks. Returns None to
        go on, or, when training has diverged, the number of updates done."""
        epoch, idx = self._batch(step)
        data = self.data
        X, y = (data.X_train, data.y_train) if idx is None else (
            data.X_train[idx], data.y_train[idx])
        record: dict[str, Any] = {"step": step, "epoch": epoch, "lr": state.lr}
        # eval mode for everything but the update itself: kernels, critical rates, monitors and
        # evaluations see BatchNorm's running statistics (no effect on models without
        # mode-dependent layers); the update's forward pass runs in training mode
        self.model.eval()
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
            record.update(loss=math.nan, diverged_in=f"{type(err).__name__}: {err}")
            self._emit(state, record, force=True)
            return step

        self.model.train()
        loss = self.loss_fn(self.model(X), y)
        self.model.eval()
        loss_value = loss.item()
        record["loss"] = loss_value
        self._evaluate(step, idx is None, record)
        max_loss = self.config.max_loss
        if not math.isfinite(loss_value) or (max_loss is not None and loss_value > max_loss):
            self._emit(state, record, force=True)
            return step

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        try:
            for cb in self.callbacks:
                cb.on_step_end(state, record)
        except Exception as err:
            if not self._has_diverged(X, y):
                raise
            record["diverged_in"] = f"{type(err).__name__}: {err}"
            self._emit(state, record, force=True)
            return step + 1
        self._emit(state, record)
        return None

    def _evaluate(self, step: int, full_batch: bool, record: dict[str, Any]) -> None:
        """Add the full training loss (mini-batch runs, every ``eval_every`` steps) and the test
        loss and error (every ``test_every`` steps) to ``record``."""
        cfg, data = self.config, self.data
        if full_batch:
            record["train_loss"] = record["loss"]
        elif step % cfg.eval_every == 0:
            record["train_loss"], _ = evaluate(self.model, data.X_train, data.y_train,
                                               self.loss_fn, classification=False)
        test_every = cfg.test_every or cfg.eval_every
        if step % test_every == 0 and data.X_test.shape[0] > 0:
            test_loss, test_err = evaluate(self.model, data.X_test, data.y_test, self.loss_fn,
                                           classification=data.task == "classification")
            record["test_loss"] = test_loss
            if test_err is not None:
                record["test_error"] = test_err

    def _end(self, state: TrainState, status: str, step: int, t0: float) -> TrainResult:
        """The summary after ``step`` updates: final losses, time, the callbacks' figures."""
        data = self.data
        classification = data.task == "classification"
        summary: dict[str, Any] = {"status": status, "steps": step}
        self.model.eval()
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

    # ---- checkpoints ------------------------------------------------------------------------
    def _checkpoint_due(self, step: int) -> bool:
        """Whether to checkpoint before update ``step`` (the final state is the caller's)."""
        every = self.checkpoint_every
        return (every is not None and self.on_checkpoint is not None and step % every == 0
                and step < self.total_steps)

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`fit` needs to continue from :attr:`step`, the next update: the
        model and optimizer states, the schedule's measured critical lr, the random-number
        states (torch CPU, CUDA when used, and the batch order: its generator and the current
        epoch's permutation), the history rows, the last lr, each callback's ``state_dict`` and
        the training time so far. Tensors share memory with the live model and optimizer, as in
        :meth:`torch.nn.Module.state_dict`; save the dict before training goes on."""
        state = self._state
        epoch, position = divmod(self.step, self.steps_per_epoch)
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"critical_lr": self._critical_lr},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": (torch.cuda.get_rng_state_all() if self.device.type == "cuda"
                             else None)},
            "batch_order": {"generator": self.generator.get_state(), "epoch": epoch,
                            "position": position,
                            "permutation": self._perm if position else None},
            "lr": state.lr if state is not None else self._last_lr,
            "history": state.history if state is not None else list(self._history),
            "callbacks": [{"name": getattr(cb, "name", type(cb).__name__),
                           "state": cb.state_dict()} for cb in self._checkpointed()],
            "elapsed_s": self._elapsed,
        }

    def _checkpointed(self) -> list[Callback]:
        """The callbacks whose states the checkpoints hold (``checkpointed`` true)."""
        return [cb for cb in self.callbacks if getattr(cb, "checkpointed", True)]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (of a trainer built the same way): the next
        :meth:`fit` starts at ``state["step"]``. Raises :class:`CheckpointError` saying what
        does not fit (missing keys, another model or optimizer, batch order, callbacks); the
        trainer may then be partly loaded and should not be used."""
        try:
            step = int(state["step"])
            order = state["batch_order"]
            callbacks = state["callbacks"]
            if not 0 <= step <= self.total_steps:
                raise CheckpointError(f"step {step} is outside this run's 0..{self.total_steps}")
            self._check_batch_order(step, order)
            names = [c["name"] for c in callbacks]
            ours = [getattr(cb, "name", type(cb).__name__) for cb in self._checkpointed()]
            if names != ours:
                raise CheckpointError(f"it holds the state of callbacks {names}, this run has "
                                      f"{ours}")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(order["generator"])
            for cb, saved in zip(self._checkpointed(), callbacks):
                cb.load_state_dict(saved["state"])
            self._critical_lr = state["schedule"]["critical_lr"]
            self._rng = dict(state["rng"])
            self._history = list(state["history"])
            self._last_lr = float(state["lr"])
            self._elapsed = float(state["elapsed_s"])
        except CheckpointError:
            raise
        except KeyError as err:
            raise CheckpointError(f"the trainer state has no {err}") from None
        except (RuntimeError, ValueError, TypeError) as err:
            what = " ".join(str(err).split())  # one line
            raise CheckpointError(f"it does not fit this run: {type(err).__name__}: "
                                  f"{what[:200]}{'...' if len(what) > 200 else ''}") from None
        self._perm = order["permutation"] if order["position"] else None
        self.step = step

    def _check_batch_order(self, step: int, order: dict[str, Any]) -> None:
        """A saved batch order must sit where ``step`` is in its epoch, with a permutation."""
        n = self.data.X_train.shape[0]
        epoch, position = divmod(step, self.steps_per_epoch)
        if (order["epoch"], order["position"]) != (epoch, position):
            raise CheckpointError(
                f"its batch order (epoch {order['epoch']}, batch {order['position']}) does not "
                f"fit step {step} with {self.steps_per_epoch} batches per epoch")
        perm = order["permutation"]
        if position and not (isinstance(perm, Tensor) and perm.shape == (n,)):
            raise CheckpointError(f"its batch order holds no permutation of the {n} samples")

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
