"""``CatapultsCallback``: the monitors of :func:`catapults.watch` in a Lightning ``Trainer``.

::

    from catapults.integrations.lightning import CatapultsCallback

    cb = CatapultsCallback(probe=(X, y), out="runs/pl", every=10, k=5)
    trainer = lightning.pytorch.Trainer(max_steps=1000, callbacks=[cb])
    trainer.fit(module, loader)
    cb.summary["events"]                   # the catapults found

A thin adapter over :class:`~catapults.monitors.watch.Watch` (one implementation of the
monitors), driven by Lightning's hooks:

- ``on_train_start``: :func:`~catapults.monitors.watch.watch` on the LightningModule and the
  trainer's first optimizer; bad input (a probe that does not fit the model, a module whose
  outputs mix samples) raises :class:`~catapults.errors.MonitorError` here, before anything is
  written;
- ``on_train_batch_start``: :meth:`Watch.begin`: the model is at θ_t, before update t; it is
  measured with update t's batch and the optimizer's learning rate at that moment;
- ``on_train_batch_end``: :meth:`Watch.end` with ``outputs["loss"]``, the loss Lightning computed
  for that batch: the row of step t is complete and written (docs/conventions.md#metrics-rows);
- ``on_train_end``: :meth:`Watch.close`; the summary is :attr:`CatapultsCallback.summary`;
- ``state_dict`` / ``load_state_dict``: a Lightning checkpoint keeps the rows so far, so
  ``trainer.fit(..., ckpt_path=...)`` goes on from there (the run directory is rewritten with
  the saved rows, each step once).

Importing this module imports ``lightning.pytorch`` (seconds); nothing else in catapults does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from catapults import metrics
from catapults.curvature.agop import Matrix
from catapults.detect import DEFAULT_FALSE_POSITIVE_RATE, DEFAULT_WINDOW
from catapults.errors import AGOPError, KernelError, MonitorError
from catapults.loggers import Logger, scalars
from catapults.monitors.watch import Watch, check_state, watch
from catapults.storage.rundir import is_run_dir

__all__ = ["CatapultsCallback", "LightningNotInstalledError"]


class LightningNotInstalledError(MonitorError, ImportError):
    """The ``lightning`` package cannot be imported (``pip install lightning``)."""


try:
    from lightning.pytorch import Callback as _LightningCallback
except ImportError as _err:
    if _err.name in ("lightning", "lightning.pytorch"):
        raise LightningNotInstalledError(
            "catapults.integrations.lightning needs the lightning package: "
            "pip install lightning") from None
    raise LightningNotInstalledError(
        f"catapults.integrations.lightning: lightning could not be imported ({_err}); "
        "reinstall it: pip install lightning") from None


def _prefixed(err: Exception) -> str:
    text = str(err)
    return text[len("watch: "):] if text.startswith("watch: ") else text


def _default_xy(batch: Any) -> tuple[Tensor, Tensor] | None:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 \
            and isinstance(batch[0], Tensor) and isinstance(batch[1], Tensor):
        return batch[0], batch[1]
    return None


class CatapultsCallback(_LightningCallback):
    """The monitors of :func:`catapults.watch` for a ``lightning.pytorch.Trainer``.

    The watched model is the LightningModule itself: ``pl_module(X)`` must give the per-sample
    outputs ``(n, c)`` whose mean MSE against ``y`` is the loss (docs/conventions.md#loss).
    The learning rate is read from the first param group of the trainer's **first optimizer**
    (a module with several optimizers is watched through the first one only). One optimizer
    step per batch: ``accumulate_grad_batches > 1`` is refused; in manual optimization,
    ``training_step`` must return the loss (tensor or ``{"loss": ...}``). A batch whose
    ``training_step`` returns no loss is not recorded. In distributed training only global rank
    0 measures and writes (with rank 0's batch).

    Measurements never change the parameters, their gradients or the random state: they run in
    eval mode and every submodule's training flag is restored (Lightning trains in train mode).

    Args:
        probe: ``(X, y)``, the fixed probe set of the NTK monitor (see :func:`catapults.watch`).
        out: a run directory to write (``metrics.jsonl``, ``events.json``, ``summary.json``,
            ``figures/``); None writes nothing.
        every, k, s, ntk, batch_kernel, method, agop, agop_inputs, agop_every, events, ratio,
            window, false_positive_rate, loggers, tensorboard, figures, overwrite: as in
            :func:`catapults.watch`.
        full_batch: True: every batch is the whole data set (no batch kernels, as in
            ``watch.step(loss)`` without a batch); False: always mini-batches; None (default):
            a batch that equals the probe ``(X, y)`` (same samples, same order) counts as full.
        batch_fn: ``batch -> (x, y)`` for batches that are not a sequence ``[x, y, ...]``.
        log_to_lightning: also ``pl_module.log_dict`` the row's scalar metrics (``lr``,
            ``ntk/eta_crit``, ``ntk/lambda_1``, ..., not the loss) at every step.

    After ``fit``, :attr:`summary` holds the watch's summary (``summary["events"]``: the
    catapults found) and :attr:`watch` the :class:`~catapults.monitors.watch.Watch` (its
    ``history`` is the rows). A second ``fit`` with the same callback goes on with its rows.
    """

    def __init__(
        self,
        probe: tuple[Tensor, Tensor] | None = None,
        out: str | Path | None = None,
        *,
        every: int = 10,
        k: int = 5,
        s: int | None = None,
        ntk: bool = True,
        batch_kernel: bool = True,
        method: str = "auto",
        agop: Matrix | None = None,
        agop_inputs: Tensor | None = None,
        agop_every: int = 50,
        events: bool = True,
        ratio: float = 3.0,
        window: int = DEFAULT_WINDOW,
        false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
        loggers: Sequence[Logger] = (),
        tensorboard: bool = False,
        figures: bool = True,
        overwrite: bool = False,
        full_batch: bool | None = None,
        batch_fn: Callable[[Any], tuple[Tensor, Tensor]] | None = None,
        log_to_lightning: bool = False,
    ) -> None:
        super().__init__()
        self.probe, self.out, self.overwrite = probe, out, overwrite
        self.options: dict[str, Any] = dict(
            every=every, k=k, s=s, ntk=ntk, batch_kernel=batch_kernel, method=method, agop=agop,
            agop_inputs=agop_inputs, agop_every=agop_every, events=events, ratio=ratio,
            window=window, false_positive_rate=false_positive_rate, loggers=loggers,
            tensorboard=tensorboard, figures=figures)
        self.full_batch, self.batch_fn = full_batch, batch_fn
        self.log_to_lightning = log_to_lightning
        self.watch: Watch | None = None
        self.summary: dict[str, Any] | None = None
        self._restored: dict[str, Any] | None = None
        self._probe_on: tuple[Tensor, Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(out=None if self.out is None else str(self.out))

    # -- Lightning hooks ------------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        if trainer.accumulate_grad_batches != 1:
            raise MonitorError("CatapultsCallback: accumulate_grad_batches > 1 is not supported "
                               "(one row per update needs one batch per update)")
        if not trainer.optimizers:
            raise MonitorError("CatapultsCallback: the LightningModule has no optimizer")
        state = self._restored
        if state is None and self.watch is not None:  # a second fit goes on from the first
            state = self.watch.state_dict()
        # resuming rewrites this callback's own run directory with the saved rows
        overwrite = self.overwrite or (state is not None and self.out is not None
                                       and is_run_dir(self.out))
        try:
            w = watch(pl_module, trainer.optimizers[0], probe=self.probe, out=self.out,
                      overwrite=overwrite, **self.options)
        except (MonitorError, KernelError, AGOPError) as err:
            raise MonitorError(f"CatapultsCallback: {_prefixed(err)}") from None
        if state is not None:
            w.load_state_dict(state)
        self.watch, self.summary, self._restored, self._probe_on = w, None, None, None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        w = self.watch
        if w is None or w.summary is not None:
            return
        w.discard()  # a batch begun but never finished (its epoch was cut short)
        w.begin(self._mini_batch(batch))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        w = self.watch
        if w is None or w.summary is not None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, (Tensor, float, int)):  # training_step returned no loss
            w.discard()
            return
        row = w.end(loss)
        if self.log_to_lightning:
            values = {key: v for key, v in scalars(row).items() if key != metrics.LOSS}
            pl_module.log_dict(values, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is not None and self.watch.summary is None:
            self.summary = self.watch.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        w = self.watch
        if w is not None and w.summary is None:
            if w.status == "running":
                w.status = "failed"
            self.summary = w.close()

    def state_dict(self) -> dict[str, Any]:
        if self.watch is not None:
            return {"watch": self.watch.state_dict()}
        return {} if self._restored is None else {"watch": self._restored}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:  # saved before training started, or by another rank
            return
        try:
            self._restored = check_state(state_dict.get("watch"))
        except MonitorError as err:
            raise MonitorError(f"CatapultsCallback: checkpoint: {_prefixed(err)}") from None

    # -- helpers --------------------------------------------------------------------------------

    def _mini_batch(self, batch: Any) -> tuple[Tensor, Tensor] | None:
        """Update t's ``(x, y)``, or None for a full batch (no batch kernels)."""
        if self.full_batch:
            return None
        xy = self.batch_fn(batch) if self.batch_fn is not None else _default_xy(batch)
        if xy is None:
            if self.options["batch_kernel"]:
                raise MonitorError(f"CatapultsCallback: cannot find (x, y) in a batch of type "
                                   f"{type(batch).__name__}; pass batch_fn=")
            return None
        if self.full_batch is None and self._is_probe(*xy):
            return None
        return xy

    def _is_probe(self, xb: Tensor, yb: Tensor) -> bool:
        if self.probe is None or xb.shape != self.probe[0].shape \
                or yb.numel() != self.probe[1].numel():
            return False
        if self._probe_on is None or self._probe_on[0].device != xb.device:
            X, y = self.probe
            self._probe_on = X.to(xb.device), y.to(xb.device)
        X, y = self._probe_on
        with torch.no_grad():
            return bool(torch.equal(xb, X.to(xb.dtype))
                        and torch.equal(yb.reshape(-1), y.to(yb.dtype).reshape(-1)))
