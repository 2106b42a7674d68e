"""The AGOP monitor: alignment of the network's AGOP with the true (or a reference) AGOP, tracked
during training (SPEC.md section 1; the paper's claim 3).

The reference (:func:`reference_agop_for`):

- synthetic data with a known target ``f*``: the exact expected AGOP ``E_x[∇f* ∇f*ᵀ]`` under
  ``x ~ N(0, I_d)`` (Gaussian moments for polynomial targets, see
  :meth:`catapults.targets.Target.expected_agop`);
- real data (or whenever ``monitor.agop.reference_run`` is given): the AGOP of another run's final
  model on this run's training inputs. The paper's choice for real data is not confirmed; this is
  a proxy for the unknown true AGOP (SPEC.md section 1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from catapults import agop as agop_lib
from catapults.agop import FactoredAGOP, Matrix
from catapults.config import ConfigError, RunConfig
from catapults.data import Dataset
from catapults.training import Callback, TrainState


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
    from catapults.runs import load_run_model

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


class AGOPMonitor(Callback):
    """Track ``ρ(G(f_θ, X), G_ref)``: the alignment of the network's AGOP on inputs ``X`` with a
    reference AGOP (SPEC.md section 1).

    Every ``every`` steps at ``θ_t`` (before update ``t``) it writes ``agop/alignment`` into the
    metrics row; at the end it measures the final model again and puts ``initial_alignment``,
    ``final_alignment`` (and more) into ``summary["monitors"]["agop"]``. ``write_artifacts``
    saves ``agop.pt`` (the final ``d × d`` AGOP and its top eigenvalues), ``figures/agop.png``
    (heat maps of the top-left ``block × block`` corner of the final and the reference AGOP, and
    their top eigenvalues) and ``figures/agop_alignment.png`` (alignment against step).

    Args:
        X: inputs ``(n, ...)`` on which the network's AGOP is computed.
        reference_agop: ``d × d`` tensor or :class:`~catapults.agop.FactoredAGOP`
            (see :func:`reference_agop_for`).
        every: measure every this many steps (and at the end).
        centered, sqrt: the variants of :func:`catapults.agop.alignment` (default: SPEC's ρ).
        chunk_size: samples per forward/backward pass.
        block, top_k: size of the heat-map corner and number of eigenvalues in the figure.

    Outside the trainer: ``monitor.measure(model)`` returns ``ρ``.
    """

    name = "agop"

    def __init__(self, X: Tensor, reference_agop: Matrix, *, every: int = 50,
                 centered: bool = False, sqrt: bool = False,
                 chunk_size: int | None = agop_lib.DEFAULT_CHUNK, block: int = 20,
                 top_k: int = 20) -> None:
        d = int(X[0].numel())
        if tuple(reference_agop.shape) != (d, d):
            raise ConfigError(f"monitor.agop: the reference AGOP is {tuple(reference_agop.shape)}"
                              f", but the inputs have size {d}")
        if every < 1:
            raise ConfigError(f"monitor.agop.every: must be >= 1, got {every}")
        self.X, self.reference = X, reference_agop
        self.every, self.centered, self.sqrt = every, centered, sqrt
        self.chunk_size, self.block, self.top_k = chunk_size, block, top_k
        self.rows: list[dict[str, Any]] = []
        self.final_agop: Tensor | None = None
        self.final_eigenvalues: Tensor | None = None
        self.final_step: int | None = None
        self.summary: dict[str, Any] = {}
        self._ref_sqrt: Matrix | None = None

    @classmethod
    def from_config(cls, config: RunConfig, data: Dataset) -> AGOPMonitor:
        """The monitor described by ``config.monitor.agop`` on ``data``: inputs
        ``data.X_train[:n_samples]`` (all when ``n_samples`` is None), reference from
        :func:`reference_agop_for`."""
        cfg = config.monitor.agop
        X = data.X_train if cfg.n_samples is None else data.X_train[:cfg.n_samples]
        return cls(X, reference_agop_for(config, data), every=cfg.every, centered=cfg.centered,
                   sqrt=cfg.sqrt)

    def _reference_for_cosine(self) -> Matrix:
        """The reference as compared: its square root with ``sqrt`` (computed once)."""
        if not self.sqrt:
            return self.reference
        if self._ref_sqrt is None:
            self._ref_sqrt = agop_lib.matrix_sqrt(self.reference)
        return self._ref_sqrt

    def _align(self, G: Matrix) -> float:
        if self.sqrt:
            G = agop_lib.matrix_sqrt(G)
        return agop_lib.alignment(G, self._reference_for_cosine(), centered=self.centered)

    def measure(self, model: nn.Module | Any, *, check: bool = False) -> float:
        """``ρ(G(model, X), reference)`` with this monitor's options (the network's AGOP in
        whichever form is cheaper, see :func:`catapults.agop.agop_for_alignment`)."""
        G = agop_lib.agop_for_alignment(model, self.X, self.reference, sqrt=self.sqrt,
                                        chunk_size=self.chunk_size, check=check)
        return self._align(G)

    def on_train_begin(self, state: TrainState) -> None:
        dtype = state.data.X_train.dtype
        self.X = self.X.to(state.device, dtype)
        self.reference = self.reference.to(state.device, dtype)
        self._ref_sqrt = None
        try:
            agop_lib.check_per_sample(state.model, self.X)
        except agop_lib.AGOPError as err:
            raise agop_lib.AGOPError(f"monitor.agop: {err}") from None

    def on_step_begin(self, state: TrainState, X: Tensor, y: Tensor,
                      record: dict[str, Any]) -> None:
        if state.step % self.every == 0:
            rho = self.measure(state.model)
            record["agop/alignment"] = rho
            self.rows.append({"step": state.step, "agop/alignment": rho})

    def on_train_end(self, state: TrainState, summary: dict[str, Any]) -> None:
        model = state.model
        d = int(self.X[0].numel())
        grads = agop_lib.input_gradients(model, self.X, chunk_size=self.chunk_size, check=False)
        G = agop_lib.FactoredAGOP.from_gradients(grads, self.X.shape[0])
        rho = self._align(G)
        finite = bool(torch.isfinite(grads).all())
        self.final_step = int(state.step)
        if finite:
            self.final_agop = G.matrix().detach().cpu()
            self.final_eigenvalues = G.eigenvalues(self.top_k).detach().cpu()
        if not self.rows or self.rows[-1]["step"] != state.step:
            self.rows.append({"step": int(state.step), "agop/alignment": rho, "final": True})
        values = [r["agop/alignment"] for r in self.rows]
        self.summary = {
            "initial_alignment": values[0],
            "final_alignment": rho,
            "max_alignment": max((v for v in values if math.isfinite(v)), default=float("nan")),
            "final_step": int(state.step),
            "measurements": len(self.rows),
            "n_samples": int(self.X.shape[0]),
            "d": d,
            "centered": self.centered,
            "sqrt": self.sqrt,
            "reference": "factored" if isinstance(self.reference, FactoredAGOP) else "dense",
            "final_trace": G.trace() if finite else float("nan"),
            "final_top_eigenvalues": (self.final_eigenvalues.tolist()
                                      if self.final_eigenvalues is not None else None),
        }
        summary["monitors"]["agop"] = self.summary

    def write_artifacts(self, run_dir: str | Path, *, figures: bool = True) -> None:
        from catapults.runs import save_torch_atomic

        run_dir = Path(run_dir)
        if self.final_agop is not None:
            save_torch_atomic(run_dir / "agop.pt", {
                "agop": self.final_agop, "eigenvalues": self.final_eigenvalues,
                "step": self.final_step, "alignment": self.summary.get("final_alignment"),
                "n_samples": int(self.X.shape[0]), "centered": self.centered, "sqrt": self.sqrt})
        if not figures:
            return
        if self.final_agop is not None:
            plot_agop(self.final_agop, run_dir / "figures" / "agop.png",
                      reference=self.reference, block=self.block, top_k=self.top_k,
                      eigenvalues=self.final_eigenvalues)
        if self.rows:
            plot_alignment(self.rows, run_dir / "figures" / "agop_alignment.png",
                           centered=self.centered, sqrt=self.sqrt)


# ---- figures --------------------------------------------------------------------------------
def plot_agop(G: Tensor, path: str | Path, *, reference: Matrix | None = None, block: int = 20,
              top_k: int = 20, eigenvalues: Tensor | None = None) -> Path:
    """Heat map of the top-left ``block × block`` corner of ``G`` (and of ``reference``), and
    the top ``top_k`` eigenvalues of both (each normalised by its largest)."""
    from catapults.reporting import plt
    from catapults.runs import save_figure_atomic

    G = G.detach().double().cpu()
    k = min(block, G.shape[0])
    ref = None
    if reference is not None:
        if isinstance(reference, FactoredAGOP):
            Fk, w = reference.F[:, :k].double(), reference.w.double()
            corner = (Fk.T * w) @ Fk
            ref_vals = reference.eigenvalues(top_k).double()
        else:
            corner = reference[:k, :k].double()
            ref_vals = torch.linalg.eigvalsh(reference.double()).flip(0)[:top_k].clamp_min(0)
        ref = (corner.cpu(), ref_vals.cpu())
    vals = (eigenvalues.double() if eigenvalues is not None
            else torch.linalg.eigvalsh(G).flip(0)[:top_k].clamp_min(0))
    panels = 3 if ref is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.0))
    mats = [("network AGOP", G[:k, :k])] + ([("reference AGOP", ref[0])] if ref else [])
    for ax, (title, M) in zip(axes, mats):
        lim = float(M.abs().max()) or 1.0
        im = ax.imshow(M.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{title}: top-left {k}x{k}")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax = axes[-1]
    for label, v, style in [("network", vals, "o-")] + ([("reference", ref[1], "s--")] if ref
                                                        else []):
        v = v[: top_k]
        top = float(v[0]) if v.numel() and float(v[0]) > 0 else 1.0
        rel = v / top
        keep = rel > 1e-12  # exact zeros (e.g. a low-rank target AGOP) are left out
        idx = torch.arange(1, v.numel() + 1)[keep]
        ax.plot(idx.numpy(), rel[keep].numpy(), style, ms=3,
                label=f"{label} (λ1 = {top:.3g}; {int(keep.sum())} non-zero shown)")
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue / largest")
    ax.set_title(f"top {top_k} eigenvalues")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    return Path(path)


def plot_alignment(rows: list[dict[str, Any]], path: str | Path, *, centered: bool = False,
                   sqrt: bool = False) -> Path:
    """AGOP alignment against step."""
    from catapults.reporting import plt
    from catapults.runs import save_figure_atomic

    pts = [(r["step"], r["agop/alignment"]) for r in rows
           if r["agop/alignment"] is not None and math.isfinite(r["agop/alignment"])]
    fig, ax = plt.subplots(figsize=(7, 4))
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "o-", ms=3, lw=1.2, color="C4")
    variant = ", ".join(v for v, on in [("centred", centered), ("sqrt", sqrt)] if on)
    ax.set_xlabel("step")
    ax.set_ylabel("AGOP alignment ρ" + (f" ({variant})" if variant else ""))
    ax.set_title("alignment of the network's AGOP with the reference AGOP")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    return Path(path)
