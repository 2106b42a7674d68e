"""``catapults.watch``: the toolkit's monitors in any training loop.

::

    import catapults
    mon = catapults.watch(model, optimizer, probe=(X, y), out="runs/mine", every=10, k=5)
    for xb, yb in loader:
        loss = F.mse_loss(model(xb), yb)
        mon.step(loss, batch=(xb, yb))   # measures θ_t before the update; omit batch for GD
        opt.zero_grad(); loss.backward(); opt.step()
    summary = mon.close()                # summary["events"]: the catapults found

:meth:`Watch.step` is called once per update, with the model still at θ_t. It reads the
learning rate of update t from the optimizer (whatever scheduler set it), measures what the
monitors ask for, and writes one metrics row. The monitors are the very objects the built-in
trainer uses (:class:`~catapults.monitors.NTKMonitor`, :class:`~catapults.monitors.AGOPMonitor`,
:class:`~catapults.monitors.EventsMonitor`), driven through the same hooks with a small
:class:`~catapults.training.callbacks.StepContext`. Where the loss is known only after the model
was measured (Lightning's hooks), :meth:`Watch.begin` measures θ_t and :meth:`Watch.end` adds the
loss and writes the row; :meth:`Watch.state_dict` / :meth:`Watch.load_state_dict` resume a watch.

Measurements never change the model's parameters, their ``.grad`` or the caller's autograd graph:
kernels come from separate forward passes and ``torch.autograd.grad`` / ``torch.func``, which do
not accumulate gradients. They are taken in eval mode (dropout off, BatchNorm on its running
statistics); the model's training flags are restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from catapults import metrics, ntk
from catapults.curvature.agop import Matrix
from catapults.curvature.checks import check_per_sample
from catapults.detect import DEFAULT_FALSE_POSITIVE_RATE, DEFAULT_WINDOW
from catapults.errors import CatapultsError, MonitorError
from catapults.loggers import JSONLinesLogger, Logger, TensorBoardLogger
from catapults.monitors.agop import AGOPMonitor
from catapults.monitors.events import EventsMonitor
from catapults.monitors.ntk import NTKMonitor
from catapults.monitors.sharpness import SharpnessMonitor
from catapults.storage.atomic import write_json_atomic
from catapults.storage.rundir import create_run_dir, prepare_run_dir
from catapults.training.callbacks import Callback, StepContext

__all__ = ["Watch", "check_state", "watch"]

STATE_VERSION = 1
"""The format of :meth:`Watch.state_dict`."""


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode, and restore each one's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _learning_rate(optimizer: torch.optim.Optimizer | None, lr: float | None) -> float:
    if lr is not None:
        return float(lr)
    if optimizer is None:
        raise MonitorError("watch: give the optimizer (its learning rate is read each step) "
                           "or lr=")
    groups = getattr(optimizer, "param_groups", None)
    if not groups or "lr" not in groups[0]:
        raise MonitorError(f"watch: the optimizer {type(optimizer).__name__} has no 'lr' in "
                           "its param_groups; pass lr= to step() instead")
    value = groups[0]["lr"]
    return float(value.item() if isinstance(value, Tensor) else value)


def _as_float(loss: Tensor | float) -> float:
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise MonitorError(f"watch.step: loss must be a scalar, got shape "
                               f"{tuple(loss.shape)}")
        return float(loss.detach())
    return float(loss)


def _check_probe(model: nn.Module, X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise MonitorError("watch: probe must be a pair of tensors (X, y)")
    if X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise MonitorError(f"watch: probe X has {X.shape[0]} samples but y has {y.shape[0]}")
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(X[:2].to(next(model.parameters()).device))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MonitorError(f"watch: the model cannot be applied to the probe inputs of shape "
                           f"{tuple(X.shape)}: {first}") from None
    if not isinstance(out, Tensor):
        raise MonitorError(f"watch: the model returns {type(out).__name__}, not a tensor")
    if out.shape[0] != min(2, X.shape[0]):
        raise MonitorError(f"watch: the model maps {min(2, X.shape[0])} probe samples to "
                           f"outputs of shape {tuple(out.shape)}; expected one row per sample")
    c = out.reshape(out.shape[0], -1).shape[1]
    if y.reshape(y.shape[0], -1).shape[1] != c:
        raise MonitorError(f"watch: the model has {c} output(s) per sample but the probe targets "
                           f"y have shape {tuple(y.shape)}")
    return X, y.reshape(y.shape[0], -1)


def check_state(state: Any) -> dict[str, Any]:
    """``state`` if it is a :meth:`Watch.state_dict` of this version, else :class:`MonitorError`."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION \
            or not isinstance(state.get("history"), list) \
            or [r.get(metrics.STEP) if isinstance(r, dict) else None
                for r in state["history"]] != list(range(len(state["history"]))):
        raise MonitorError(f"watch: not a saved watch state of version {STATE_VERSION}")
    return state


class Watch:
    """A monitor for a hand-written training loop; made by :func:`watch` (see there)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 monitors: list[Callback], loggers: list[Logger], out: Path | None, *,
                 figures: bool, settings: dict[str, Any],
                 probe_inputs: Tensor | None = None) -> None:
        p = next(model.parameters())
        self.model, self.optimizer = model, optimizer
        self.monitors, self.loggers, self.out = monitors, loggers, out
        self.figures, self.settings = figures, settings
        self.probe_inputs = probe_inputs
        self.context = StepContext(model=model, optimizer=optimizer, device=p.device,
                                   dtype=p.dtype, full_batch=True)
        self.status = "running"
        self.history = self.context.history
        self._t0 = time.perf_counter()
        self._began = False
        self._closed = False
        self._pending: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None

    @property
    def steps(self) -> int:
        """Number of :meth:`step` calls so far."""
        return len(self.history)

    def step(self, loss: Tensor | float, batch: tuple[Tensor, Tensor] | None = None, *,
             lr: float | None = None) -> dict[str, Any]:
        """Record update ``t`` (the ``t``-th call, from 0) with the model at θ_t.

        Args:
            loss: the loss of update t's batch (a scalar tensor or float); only its value is
                read, its graph is left alone.
            batch: the mini-batch ``(xb, yb)`` of update t, for its kernel's λ_max and
                ``η_crit(B)``; omit it for full-batch training (the probe is the data).
            lr: the learning rate of update t, if the optimizer should not be asked.

        Returns the metrics row (``step``, ``loss``, ``lr`` and the measurements). The same as
        :meth:`begin` then :meth:`end`.
        """
        self.begin(batch, lr=lr, loss=loss)
        return self.end()

    def begin(self, batch: tuple[Tensor, Tensor] | None = None, *, lr: float | None = None,
              loss: Tensor | float | None = None) -> dict[str, Any]:
        """The first half of :meth:`step`, for loops that know update t's loss only later (the
        Lightning callback): measure θ_t now (with the batch and learning rate of update t) and
        hold the row until :meth:`end` gives the loss. Returns the row so far (``loss`` None
        unless given here); it is neither kept nor logged before :meth:`end`."""
        if self._closed:
            raise MonitorError("watch: step() after close()")
        if self._pending is not None:
            raise MonitorError("watch: begin() again before end(); call end(loss) or discard()")
        ctx = self.context
        ctx.step, ctx.lr = self.steps, _learning_rate(self.optimizer, lr)
        ctx.full_batch = batch is None
        row: dict[str, Any] = {metrics.STEP: ctx.step, metrics.LR: ctx.lr, metrics.LOSS: None}
        if loss is not None:
            row[metrics.LOSS] = _as_float(loss)
            if not math.isfinite(row[metrics.LOSS]):
                self.status = "diverged"
        if self.status != "diverged":
            self._measure(row, batch)
        self._pending = row
        return row

    def end(self, loss: Tensor | float | None = None) -> dict[str, Any]:
        """Complete the row begun by :meth:`begin` with the loss of update t (if not given
        there), keep it in :attr:`history` and send it to the loggers. Returns the row."""
        row = self._pending
        if row is None:
            raise MonitorError("watch: end() without begin()")
        if loss is not None:
            row[metrics.LOSS] = _as_float(loss)
        if row[metrics.LOSS] is None:
            raise MonitorError("watch: end() needs the loss of update t")
        if not math.isfinite(row[metrics.LOSS]):
            self.status = "diverged"
        self._pending = None
        self.history.append(row)
        for lg in self.loggers:
            lg.log(row)
        return row

    def discard(self) -> None:
        """Drop the row begun by :meth:`begin` (its update did not happen); nothing is logged.
        A monitor's own per-step records (the NTK monitor's figures) may keep its measurement."""
        self._pending = None

    def _measure(self, row: dict[str, Any], batch: tuple[Tensor, Tensor] | None) -> None:
        ctx = self.context
        with eval_mode(self.model):
            if not self._began:
                for m in self.monitors:
                    m.on_train_begin(ctx)
                self._began = True
            X, y = batch if batch is not None else (None, None)
            if X is not None:
                X, y = X.to(ctx.device, ctx.dtype), y.to(ctx.device, ctx.dtype)
            try:
                for m in self.monitors:
                    m.on_step_begin(ctx, X, y, row)
            except Exception as err:
                if not self._out_of_range(X):
                    raise
                self.status = "diverged"
                row[metrics.DIVERGED_IN] = f"{type(err).__name__}: {err}"

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def _out_of_range(self, X: Tensor | None) -> bool:
        """After a failed measurement: whether θ_t has left floating-point range (training
        diverged): non-finite weights, or a non-finite kernel on a few of the measured inputs
        (finite weights whose kernel overflows, met before the loss is known in :meth:`begin`)."""
        if not self._weights_finite():
            return True
        inputs = X if X is not None else self.probe_inputs
        if inputs is None:
            return False
        try:
            K = ntk.empirical_ntk(self.model, inputs[:4], kind="full", check=False)
        except Exception:
            return False
        return not bool(torch.isfinite(K).all())

    def close(self) -> dict[str, Any]:
        """Finish: find the catapults, write ``events.json``, figures and ``summary.json`` (with
        ``out``), close the loggers. Returns the summary; ``summary["events"]`` lists the
        catapults (``start``, ``peak``, ``end`` steps, heights, attribution). Idempotent."""
        if self.summary is not None:
            return self.summary
        self._closed = True
        self._pending = None
        if self.status == "running":
            self.status = "completed"
        summary: dict[str, Any] = {"status": self.status, "steps": self.steps, "monitors": {},
                                   "wall_time_s": time.perf_counter() - self._t0,
                                   "watch": self.settings}
        if self.history:
            summary["final_loss"] = self.history[-1][metrics.LOSS]
        events: list[dict[str, Any]] = []
        for m in self.monitors:
            try:
                m.on_train_end(self.context, summary)
            except Exception as err:
                if self.status != "diverged":
                    raise
                summary["monitors"][m.name] = {"error": f"{type(err).__name__}: {err}"}
            if isinstance(m, EventsMonitor) and m.result is not None:
                events = [e.to_dict() for e in m.result["events"]]
        if self.out is not None:
            self._write(summary)
        for lg in self.loggers:
            lg.close()
        summary["events"] = events
        self.summary = summary
        return summary

    def _write(self, summary: dict[str, Any]) -> None:
        assert self.out is not None
        for m in self.monitors:
            m.write_artifacts(self.out, figures=self.figures)
        if self.figures and self.history:
            from catapults.plotting import plot_training

            ev = next((m.result["events"] for m in self.monitors
                       if isinstance(m, EventsMonitor) and m.result), [])
            plot_training(self.history, self.out / "figures" / "loss.png",
                          title=f"{type(self.model).__name__} (catapults.watch)", events=ev)
        write_json_atomic(self.out / "summary.json", summary)

    def state_dict(self) -> dict[str, Any]:
        """What resumes this watch elsewhere (:meth:`load_state_dict`): the rows so far (so the
        step counter), the status, the wall time, and the state of each monitor that offers a
        ``state_dict()`` (by monitor name). Plain Python values and tensors (``torch.save``)."""
        states = {}
        for m in self.monitors:
            fn = getattr(m, "state_dict", None)
            if callable(fn):
                states[m.name] = fn()
        return {"version": STATE_VERSION, "steps": self.steps, "status": self.status,
                "history": [dict(r) for r in self.history], "monitors": states,
                "wall_time_s": time.perf_counter() - self._t0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` before the first step: the rows so far become
        :attr:`history` (and are sent once to this watch's loggers, so a new ``metrics.jsonl``
        holds every step once), the step counter goes on from there, and each monitor with a
        ``load_state_dict`` gets its saved state. :class:`MonitorError` for another format."""
        state = check_state(state)
        if self.steps or self._pending is not None or self._closed:
            raise MonitorError("watch: load_state_dict() only before the first step")
        self.history.extend(dict(r) for r in state["history"])
        self.status = "diverged" if state.get("status") == "diverged" else "running"
        self._t0 -= float(state.get("wall_time_s", 0.0))
        saved = state.get("monitors") or {}
        for m in self.monitors:
            fn = getattr(m, "load_state_dict", None)
            if callable(fn) and m.name in saved:
                fn(saved[m.name])
        for row in self.history:
            for lg in self.loggers:
                lg.log(row)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.status == "running":
            self.status = "failed"
        self.close()


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    probe: tuple[Tensor, Tensor] | None = None,
    out: str | Path | None = None,
    every: int = 10,
    k: int = 5,
    s: int | None = None,
    ntk: bool = True,
    batch_kernel: bool = True,
    method: str = "auto",
    kernel_method: str = "auto",
    agop: Matrix | None = None,
    agop_inputs: Tensor | None = None,
    agop_every: int = 50,
    sharpness: bool = False,
    sharpness_batch_size: int | None = None,
    sharpness_method: str = "lanczos",
    events: bool = True,
    ratio: float = 3.0,
    window: int = DEFAULT_WINDOW,
    false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
    loggers: Sequence[Logger] = (),
    tensorboard: bool = False,
    figures: bool = True,
    overwrite: bool = False,
) -> Watch:
    """Watch ``model`` trained by ``optimizer`` in your own loop (see the module docstring).

    Args:
        model: any ``nn.Module`` the NTK engine accepts (its output for a sample must not depend
            on the other samples; measured in eval mode).
        optimizer: any ``torch.optim`` optimizer; the learning rate is read from its first param
            group at every step (so any scheduler works).
        probe: ``(X, y)``: the fixed probe set of the NTK monitor (``n`` samples, targets
            ``(n,)`` or ``(n, c)``): ``λ_1..λ_k``, ``η_crit = n·c/λ_1``, the loss split.
        out: a run directory to write (``metrics.jsonl``, ``events.json``, ``summary.json``,
            ``figures/``; ``tensorboard/`` with ``tensorboard=True``); None writes nothing.
        every, k, s, method: the NTK monitor's options (measure every ``every`` steps, the top
            ``k`` eigenvalues, top-eigenspace size ``s`` of the split, eigen-solver).
        kernel_method: how the kernels are computed (``empirical_ntk``'s ``method``: ``auto``,
            ``rules``, ``jacobian``, ``matvec``).
        ntk: track the NTK on the probe (needs ``probe``).
        batch_kernel: for mini-batch steps, ``λ_max(K_B)`` and ``η_crit(B)`` every step.
        agop: a reference AGOP (``d × d`` tensor or :class:`~catapults.agop.FactoredAGOP`) to
            track the alignment with, on ``agop_inputs`` (default: the probe inputs) every
            ``agop_every`` steps.
        sharpness: track the loss Hessian's sharpness on the probe every ``every`` steps
            against the optimizer's edge (:class:`~catapults.monitors.SharpnessMonitor`; with
            ``sharpness_batch_size`` also the batch sharpness; ``sharpness_method="track"``:
            one Hessian-vector product per measurement, for measuring every step).
        events: detect catapults in the step losses at ``close()`` (``ratio``: the minimum
            height, ``window``, ``false_positive_rate``: see :func:`catapults.detect.detect`).
        loggers: extra :class:`~catapults.loggers.Logger` objects that receive every row.
        overwrite: replace ``out`` if it is a run directory.

    Returns a :class:`Watch`; call its ``step`` once per update and ``close`` at the end (or use
    it as a context manager). Bad input raises :class:`~catapults.errors.MonitorError` (or the
    curvature layer's :class:`~catapults.errors.KernelError`) before anything is written.
    """
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise MonitorError("watch: model must be an nn.Module with parameters")
    if every < 1 or k < 1 or agop_every < 1:
        raise MonitorError("watch: every, k and agop_every must be >= 1")
    if optimizer is not None:
        _learning_rate(optimizer, None)
    monitors: list[Callback] = []
    X = y = None
    if probe is not None:
        X, y = _check_probe(model, *probe)
        p = next(model.parameters())
        X, y = X.to(p.device, p.dtype), y.to(p.device, p.dtype)
        with eval_mode(model):
            check_per_sample(model, X)
    if ntk and X is not None:
        monitors.append(NTKMonitor(X, y, k=k, every=every, s=s, batch=batch_kernel,
                                   method=method, kernel_method=kernel_method))
    elif batch_kernel:  # no probe: only the kernels of the mini-batches
        monitors.append(NTKMonitor(None, None, batch=True, method=method,
                                   kernel_method=kernel_method))
    if sharpness:
        if X is None:
            raise MonitorError("watch: sharpness=True needs a probe")
        monitors.append(SharpnessMonitor(X, y, every=every, batch_size=sharpness_batch_size,
                                         method=sharpness_method))
    if agop is not None:
        inputs = agop_inputs if agop_inputs is not None else X
        if inputs is None:
            raise MonitorError("watch: agop= needs agop_inputs= or a probe")
        try:
            monitors.append(AGOPMonitor(inputs, agop, every=agop_every))
        except CatapultsError as err:
            raise MonitorError(f"watch: {err}") from None
    if events:
        monitors.append(EventsMonitor(ratio=ratio, window=window, series=metrics.LOSS,
                                      false_positive_rate=false_positive_rate))
    settings = {"every": every, "k": k, "s": s, "ntk": ntk and X is not None,
                "batch_kernel": batch_kernel, "method": method, "kernel_method": kernel_method,
                "agop": agop is not None,
                "events": events, "probe_size": None if X is None else int(X.shape[0])}
    all_loggers = list(loggers)
    out_path = None
    if tensorboard and out is None:
        raise MonitorError("watch: tensorboard=True needs out=")
    if tensorboard:
        TensorBoardLogger.check_available()
    if out is not None:
        out_path = create_run_dir(prepare_run_dir(out, overwrite=overwrite), overwrite=overwrite)
        write_json_atomic(out_path / "watch.json", settings)
        all_loggers.insert(0, JSONLinesLogger(out_path / "metrics.jsonl"))
        if tensorboard:
            all_loggers.append(TensorBoardLogger(out_path / "tensorboard"))
    return Watch(model, optimizer, monitors, all_loggers, out_path, figures=figures,
                 settings=settings, probe_inputs=X)
