"""NTK benchmark (issue 3): our empirical NTK against the torch.func Jacobian-contraction recipe
and nngeometry 0.4's GramMatrix, top-5 eigenpairs (dense against matrix-free), and the cost of
tracking lambda_1..lambda_5 every step relative to a plain full-batch GD step.

One process, one thread count (``torch.set_num_threads``), float32, the same model and data for
every method: MLP 100 -> 1024 -> 1024 -> 1, ReLU, NTK parameterisation, no bias, x ~ N(0, I_100).

nngeometry only knows ``torch.nn.Linear``. It (and our engine, as a check) runs on a *twin* of the
catapults MLP built from ``nn.Linear`` layers with the NTK factor 1/sqrt(fan_in) applied to each
layer's input instead of its weight: ``W (s x) = s W x``, the same function and the same
parameters W, hence exactly the same kernel (up to float32 rounding).

Error: ``max_ij |K32_ij - K64_ij| / max_ij |K64_ij|``, K64 the float64 kernel of the same weights
(float32 weights cast to float64) on the same inputs, from our fast path in float64, itself checked
against float64 ``vmap(jacrev)`` on a block of samples (``ref_check`` in the output).

Usage: ``python benchmarks/bench_ntk.py [--quick] [--json PATH] [--repeats R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from machine import finish, footer, record_header, save_result, targets_report
from machine import wait_quiet as _wait_quiet
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from catapults.models import MLP
from catapults.monitors.ntk import NTKMonitor
from catapults.ntk import (
    block_krylov_top,
    eig_top,
    empirical_ntk,
    per_sample_jacobian,
    top_eigenpairs,
)

D_IN, WIDTH, DEPTH = 100, 1024, 3


# ---- helpers ----------------------------------------------------------------------------
def timeit(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float], Any]:
    """Median wall time (s) over ``repeats`` calls after ``warmup`` calls, all the times, and the
    last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        wait_quiet()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


QUIET = {"max_wait_s": 0.0, "waited_s": 0.0, "busy": []}


def wait_quiet() -> None:
    """:func:`machine.wait_quiet` with this benchmark's settings (``--wait-idle``)."""
    _wait_quiet(QUIET)


def rel_err(K: Tensor, K64: Tensor) -> float:
    """``max |K - K64| / max |K64|``."""
    return float((K.to(torch.float64) - K64).abs().max() / K64.abs().max())


class Scale(nn.Module):
    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: Tensor) -> Tensor:
        return x * self.a


def linear_twin(model: MLP) -> nn.Sequential:
    """The same network with plain ``nn.Linear`` layers (scale moved onto the layer input)."""
    mods: list[nn.Module] = []
    for mod in model.net:
        if hasattr(mod, "weight_scale"):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                            dtype=mod.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(mod.weight)
                if mod.bias is not None:  # not used here (no bias); kept exact for completeness
                    lin.bias.copy_(mod.bias * mod.bias_scale)
            mods += [Scale(mod.weight_scale), lin]
        elif not isinstance(mod, nn.Flatten):
            mods.append(copy.deepcopy(mod))
    return nn.Sequential(*mods)


def relu_flips(model: MLP, X: Tensor) -> tuple[int, list[int]]:
    """Pre-activations whose sign differs between the float32 and the float64 forward pass
    (a ReLU kink: the kernel is discontinuous there), and the samples they belong to."""
    m64 = copy.deepcopy(model).double()
    h32, h64 = X, X.double()
    flips = torch.zeros(X.shape[0], dtype=torch.long)
    with torch.no_grad():
        for mod, mod64 in zip(model.net, m64.net):
            if isinstance(mod, nn.ReLU):
                flips += ((h32 > 0) != (h64 > 0)).sum(1)
            h32, h64 = mod(h32), mod64(h64)
    return int(flips.sum()), flips.nonzero().flatten().tolist()


def masked_err(K: Tensor, K64: Tensor, rows: list[int]) -> float:
    """``rel_err`` outside the rows and columns of the given samples."""
    keep = torch.ones(K.shape[0], dtype=torch.bool)
    keep[rows] = False
    return rel_err(K[keep][:, keep], K64[keep][:, keep])


# ---- (b) the torch.func recipe ----------------------------------------------------------
class JacobianContraction:
    """The torch.func NTK recipe: per-sample Jacobians with ``vmap(jacrev)`` in chunks of ``chunk``
    samples, contracted parameter by parameter (``J_a J_bᵀ`` summed over parameters) on the upper
    block triangle only (symmetry: a favour to the recipe). The Jacobian chunks are kept (n·p
    floats, 4.6 GB at n = 1000); larger n is refused (``fits``) and extrapolated instead."""

    def __init__(self, model: nn.Module, chunk: int = 100, budget: float = 6e9) -> None:
        self.params = {k: v.detach() for k, v in model.named_parameters()}
        self.p = sum(v.numel() for v in self.params.values())
        self.chunk, self.budget = chunk, budget

        def f1(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(model, p, (x.unsqueeze(0),)).reshape(-1)

        self.jac = vmap(jacrev(f1), in_dims=(None, 0))

    def fits(self, n: int) -> bool:
        return n * self.p * 4 <= self.budget

    def jacobians(self, X: Tensor) -> list[list[Tensor]]:
        out = []
        for i in range(0, X.shape[0], self.chunk):
            jac = self.jac(self.params, X[i:i + self.chunk])
            out.append([v.reshape(v.shape[0], -1) for v in jac.values()])  # c = 1
        return out

    def contract(self, J: list[list[Tensor]], n: int) -> Tensor:
        K = torch.empty(n, n)
        starts = [i * self.chunk for i in range(len(J))]
        for a, Ja in enumerate(J):
            for b in range(a, len(J)):
                blk = sum(ja @ jb.T for ja, jb in zip(Ja, J[b]))
                sa, sb = starts[a], starts[b]
                K[sa:sa + blk.shape[0], sb:sb + blk.shape[1]] = blk
                K[sb:sb + blk.shape[1], sa:sa + blk.shape[0]] = blk.T
        return K

    def __call__(self, X: Tensor) -> Tensor:
        return self.contract(self.jacobians(X), X.shape[0])

    def timed_parts(self, X: Tensor) -> tuple[float, float, Tensor]:
        t0 = time.perf_counter()
        J = self.jacobians(X)
        t1 = time.perf_counter()
        K = self.contract(J, X.shape[0])
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, K


# ---- (c) nngeometry ---------------------------------------------------------------------------
def nngeometry_gram() -> tuple[Callable[[nn.Module, Tensor], Tensor] | None, str]:
    try:
        import nngeometry
        from nngeometry.gram import GramMatrix
    except Exception as exc:  # noqa: BLE001 - record exactly why
        return None, f"nngeometry not importable: {type(exc).__name__}: {exc}"

    def run(model: nn.Module, X: Tensor) -> Tensor:
        # nngeometry sets requires_grad on the tensor it is given: give it its own copy
        G = GramMatrix(model, (X.detach().clone(),))
        n = X.shape[0]
        return G.data.reshape(n, n)

    try:
        import importlib.metadata as md
        return run, md.version("nngeometry")
    except Exception:  # noqa: BLE001 - installed without metadata
        return run, getattr(nngeometry, "__version__", "?")


# ---- sections ---------------------------------------------------------------------------
def bench_kernels(model: MLP, sizes: list[int], recipe_sizes: list[int], repeats: int,
                  recipe_repeats: int, error_draws: dict[int, int],
                  log: Callable[[str], None]) -> dict[str, Any]:
    twin = linear_twin(model)
    m64 = copy.deepcopy(model).double()
    gram_fn, nng_info = nngeometry_gram()
    recipe = JacobianContraction(model)
    res: dict[str, Any] = {"nngeometry": nng_info, "sizes": {}}
    recipe_rates = None
    for n in sizes:
        X = torch.randn(n, D_IN, generator=torch.Generator().manual_seed(n))
        K64 = empirical_ntk(m64, X.double(), method="fast")
        nflip, flip_rows = relu_flips(model, X)
        row: dict[str, Any] = {"n": n, "relu_sign_flips_f32_vs_f64": nflip,
                               "flip_samples": flip_rows[:20]}
        # (a) ours, on the catapults MLP and on the nn.Linear twin, interleaved with (c)
        fns: dict[str, Callable[[], Tensor]] = {
            "ours": lambda X=X: empirical_ntk(model, X),
            "ours_twin": lambda X=X: empirical_ntk(twin, X),
        }
        if gram_fn is not None:
            fns["nngeometry"] = lambda X=X: gram_fn(twin, X)
        times: dict[str, list[float]] = {k: [] for k in fns}
        outs: dict[str, Tensor] = {k: f() for k, f in fns.items()}  # warm-up
        for r in range(repeats):
            order = list(fns) if r % 2 == 0 else list(fns)[::-1]
            for k in order:
                wait_quiet()
                t0 = time.perf_counter()
                outs[k] = fns[k]()
                times[k].append(time.perf_counter() - t0)
        for k in fns:
            row[f"{k}_s"] = statistics.median(times[k])
            row[f"{k}_times"] = times[k]
            row[f"{k}_err"] = rel_err(outs[k], K64)
            row[f"{k}_err_outside_flips"] = masked_err(outs[k], K64, flip_rows)
        if gram_fn is not None:
            row["speedup_vs_nngeometry"] = row["nngeometry_s"] / row["ours_s"]
            row["speedup_vs_nngeometry_same_module"] = row["nngeometry_s"] / row["ours_twin_s"]
        log(f"  n={n}: ours {row['ours_s']:.3f} s, "
            + (f"nngeometry {row['nngeometry_s']:.3f} s, " if gram_fn else "")
            + f"err {row['ours_err']:.2e} ({nflip} ReLU sign flips f32/f64)")
        # (b) the recipe: measured where J fits in memory, else extrapolated from measured rates
        if n in recipe_sizes and recipe.fits(n):
            tj, tc, Kb = [], [], None
            for _ in range(recipe_repeats):
                wait_quiet()
                a, b, Kb = recipe.timed_parts(X)
                tj.append(a)
                tc.append(b)
            tot = [a + b for a, b in zip(tj, tc)]
            row.update(recipe_s=statistics.median(tot), recipe_times=tot, recipe_measured=True,
                       recipe_jacobian_s=statistics.median(tj),
                       recipe_contract_s=statistics.median(tc), recipe_err=rel_err(Kb, K64))
            recipe_rates = (n, statistics.median(tj) / n, statistics.median(tc) / n ** 2)
            del Kb
            log(f"  n={n}: recipe {row['recipe_s']:.1f} s (measured)")
        elif recipe_rates is not None:
            n0, per_sample, per_pair = recipe_rates
            row.update(recipe_s=per_sample * n + per_pair * n * n, recipe_measured=False,
                       recipe_extrapolated_from_n=n0,
                       recipe_note=(f"not run (J would need {n * recipe.p * 4 / 1e9:.1f} GB); "
                                    f"extrapolated from n={n0} as t_jac*(n/{n0}) + "
                                    f"t_contract*(n/{n0})^2 (a lower bound: at this n the "
                                    "Jacobian chunks do not fit and would be recomputed)"))
            log(f"  n={n}: recipe ~{row['recipe_s']:.0f} s (extrapolated from n={n0})")
        if "recipe_s" in row:
            row["speedup_vs_recipe"] = row["recipe_s"] / row["ours_s"]
        # the error over further draws of X: a float32/float64 ReLU sign flip (a pre-activation
        # within rounding of 0) changes the float32 kernel's row for that sample: that is the
        # float32 forward pass, shared by every method, not the kernel arithmetic
        draws = []
        for d in range(error_draws.get(n, 0)):
            Xd = torch.randn(n, D_IN, generator=torch.Generator().manual_seed(1000 * n + d + 1))
            Kd64 = empirical_ntk(m64, Xd.double(), method="fast")
            Kd = empirical_ntk(model, Xd)
            nf, rows = relu_flips(model, Xd)
            draws.append({"err": rel_err(Kd, Kd64), "flips": nf,
                          "err_outside_flips": masked_err(Kd, Kd64, rows)})
            del Kd64, Kd
        if draws:
            row["error_draws"] = draws
            row["error_draws_max"] = max(x["err"] for x in draws)
            row["error_draws_max_outside_flips"] = max(x["err_outside_flips"] for x in draws)
            row["error_draws_with_flips"] = sum(x["flips"] > 0 for x in draws)
        # the float64 reference itself, against float64 vmap(jacrev) on a block of samples
        m = min(n, 48)
        J = per_sample_jacobian(m64, X[:m].double(), chunk_size=16)
        row["ref_check"] = rel_err(K64[:m, :m], J @ J.T)
        del J
        res["sizes"][str(n)] = row
    return res


def bench_eig(model: MLP, n: int, k: int, repeats: int, free_repeats: int,
              log: Callable[[str], None]) -> dict[str, Any]:
    X = torch.randn(n, D_IN, generator=torch.Generator().manual_seed(n))
    t_dense, td, (vd, Ud) = timeit(
        lambda: top_eigenpairs(model, X, k, method="dense"), repeats)
    t_free, tf, (vf, Uf) = timeit(
        lambda: top_eigenpairs(model, X, k, method="lanczos"), free_repeats, warmup=0)
    K = empirical_ntk(model, X).double()  # the matrix both solvers target (float32 model)
    K64 = empirical_ntk(copy.deepcopy(model).double(), X.double())
    ref_vals, _ = block_krylov_top(K64.__matmul__, n, k, tol=1e-12)

    def residual(vals: Tensor, vecs: Tensor, M: Tensor) -> list[float]:
        v, U = vals.double(), vecs.double()
        return ((M @ U - U * v).norm(dim=0) / (v * U.norm(dim=0))).tolist()

    out = {
        "n": n, "k": k,
        "dense_s": t_dense, "dense_times": td,
        "matrix_free_s": t_free, "matrix_free_times": tf,
        "dense_eigenvalues": vd.tolist(), "matrix_free_eigenvalues": vf.tolist(),
        "float64_eigenvalues": ref_vals.tolist(),
        "dense_residual": residual(vd, Ud, K),
        "matrix_free_residual": residual(vf, Uf, K),
        "dense_residual_vs_K64": residual(vd, Ud, K64),
        "matrix_free_residual_vs_K64": residual(vf, Uf, K64),
        "dense_eig_rel_err_vs_f64": float(((vd.double() - ref_vals).abs() / ref_vals).max()),
        "matrix_free_eig_rel_err_vs_f64": float(((vf.double() - ref_vals).abs()
                                                 / ref_vals).max()),
    }
    log(f"  n={n}: dense {t_dense:.2f} s, matrix-free {t_free:.2f} s, "
        f"max residual dense {max(out['dense_residual']):.1e}, "
        f"matrix-free {max(out['matrix_free_residual']):.1e}")
    return out


def bench_tracking(n: int, k: int, steps: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Full-batch GD on a fixed synthetic task (y = x1*x2); every step a plain GD step is timed,
    then NTKMonitor.measure (lambda_1..lambda_k, eta_crit, the loss split) on the training set."""
    model = MLP(D_IN, 1, width=WIDTH, depth=DEPTH, activation="relu", bias=False,
                parameterization="ntk", seed=1)
    g = torch.Generator().manual_seed(7)
    X = torch.randn(n, D_IN, generator=g)
    y = (X[:, 0] * X[:, 1]).reshape(n, 1)
    monitor = NTKMonitor(X, y, k=k, every=1)
    lam1 = float(eig_top(empirical_ntk(model, X), 1)[0][0])
    lr = 0.5 * n / lam1  # half the critical learning rate: smooth, stable GD
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()

    def gd_step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    t_step, t_meas, t_ntk, t_eig, t_eig_cold = [], [], [], [], []
    monitor.measure(model, lr)  # warm-up (and first eigenvectors)
    gd_step()
    for _ in range(steps):
        wait_quiet()
        t0 = time.perf_counter()
        gd_step()
        t1 = time.perf_counter()
        wait_quiet()
        t1b = time.perf_counter()
        monitor.measure(model, lr)
        t2 = time.perf_counter()
        t_step.append(t1 - t0)
        t_meas.append(t2 - t1b)
    # breakdown, on further GD steps: kernel, eigensolve warm-started from the previous step's
    # eigenvectors (what measure does), and cold (random start)
    prev = monitor._vecs
    for _ in range(max(3, steps // 3)):
        gd_step()
        wait_quiet()
        t0 = time.perf_counter()
        K = empirical_ntk(model, X, kind="full", check=False)
        t1 = time.perf_counter()
        _, vecs = eig_top(K, k, v0=prev)
        t2 = time.perf_counter()
        eig_top(K, k)
        t3 = time.perf_counter()
        prev = vecs
        t_ntk.append(t1 - t0)
        t_eig.append(t2 - t1)
        t_eig_cold.append(t3 - t2)
    # the previous solver, for comparison: ARPACK (scipy eigsh) on the dense kernel
    import numpy as np
    from scipy.sparse.linalg import eigsh

    Kn = K.double().numpy()
    start = prev.double().sum(1).numpy()
    t_arpack, _, _ = timeit(lambda: eigsh(Kn, k=k, which="LA", v0=start, tol=1e-10), 3)
    med = statistics.median
    out = {
        "n": n, "k": k, "steps": steps, "lr": lr,
        "gd_step_s": med(t_step), "measure_s": med(t_meas),
        "ratio": med(t_meas) / med(t_step),
        "ratio_paired_median": med([m / s for m, s in zip(t_meas, t_step)]),
        "ratio_kernel_plus_eig": (med(t_ntk) + med(t_eig)) / med(t_step),
        "ntk_s": med(t_ntk), "eig_warm_s": med(t_eig), "eig_cold_s": med(t_eig_cold),
        "arpack_eigsh_s": t_arpack,
        "gd_step_times": t_step, "measure_times": t_meas,
        "final_lambda": [float(v) for v in monitor.measure(model, lr)["ntk/lambda"]],
        "numpy": np.__version__,
    }
    log(f"  n={n}: GD step {out['gd_step_s'] * 1e3:.1f} ms, measure "
        f"{out['measure_s'] * 1e3:.1f} ms (kernel {out['ntk_s'] * 1e3:.1f}, eig warm "
        f"{out['eig_warm_s'] * 1e3:.1f}, cold {out['eig_cold_s'] * 1e3:.1f}, ARPACK "
        f"{t_arpack * 1e3:.1f}), ratio {out['ratio']:.2f}")
    return out


# ---- report -------------------------------------------------------------------------------------
def table(res: dict[str, Any]) -> str:
    lines: list[str] = []
    if "kernel" in res:
        lines += _kernel_table(res["kernel"])
    if "eig" in res:
        lines += _eig_table(res["eig"])
    if "tracking" in res:
        lines += _tracking_table(res["tracking"])
    return "\n".join(lines)


def _kernel_table(kr: dict[str, Any]) -> list[str]:
    lines = []
    lines.append("Empirical NTK, float32 (median seconds; error = max|K32-K64|/max|K64|)")
    hdr = (f"{'n':>6} {'ours':>9} {'nngeometry':>11} {'recipe':>13} {'x recipe':>9} "
           f"{'x nngeo':>8} {'err ours':>9} {'err nngeo':>10} {'err recipe':>10} "
           f"{'err ours*':>9}")
    lines += [hdr, "-" * len(hdr)]
    for row in kr["sizes"].values():
        rec = row.get("recipe_s")
        rec_s = "-" if rec is None else f"{rec:.1f}"
        if rec is not None and not row["recipe_measured"]:
            rec_s += " (ext)"
        lines.append(
            f"{row['n']:>6} {row['ours_s']:>9.4f} {row.get('nngeometry_s', math.nan):>11.4f} "
            f"{rec_s:>13} {row.get('speedup_vs_recipe', math.nan):>9.0f} "
            f"{row.get('speedup_vs_nngeometry', math.nan):>8.2f} {row['ours_err']:>9.1e} "
            f"{row.get('nngeometry_err', math.nan):>10.1e} "
            f"{row.get('recipe_err', math.nan):>10.1e} "
            f"{row['ours_err_outside_flips']:>9.1e}")
    lines.append("  err ours* = outside the samples with a float32/float64 ReLU sign flip; "
                 "(ext) = extrapolated, not measured")
    for row in kr["sizes"].values():
        lines.append(f"  n={row['n']}: ReLU sign flips f32 vs f64: "
                     f"{row['relu_sign_flips_f32_vs_f64']}; ours on the nn.Linear twin "
                     f"{row['ours_twin_s']:.4f} s (x nngeo same module "
                     f"{row.get('speedup_vs_nngeometry_same_module', math.nan):.2f}); "
                     f"reference check vs float64 vmap(jacrev) {row['ref_check']:.1e}")
        if "error_draws" in row:
            lines.append(f"  n={row['n']}: error over {len(row['error_draws'])} more draws of X: "
                         f"max {row['error_draws_max']:.1e} ({row['error_draws_with_flips']} "
                         "draws with a ReLU sign flip), outside flip samples max "
                         f"{row['error_draws_max_outside_flips']:.1e}")
    if "recipe_note" in str(kr):
        for row in kr["sizes"].values():
            if "recipe_note" in row:
                lines.append(f"  recipe n={row['n']}: {row['recipe_note']}")
    return lines


def _eig_table(e: dict[str, Any]) -> list[str]:
    lines = [""]
    lines.append(f"Top-{e['k']} eigenpairs at n={e['n']} (median seconds; residual "
                 "||Kv - lambda v|| / lambda against the float32 model's kernel)")
    lines.append(f"  dense (kernel + block Krylov): {e['dense_s']:.3f} s, max residual "
                 f"{max(e['dense_residual']):.1e}, eigenvalue err vs float64 "
                 f"{e['dense_eig_rel_err_vs_f64']:.1e}")
    lines.append(f"  matrix-free Lanczos (K v = J(J^T v)): {e['matrix_free_s']:.3f} s, max "
                 f"residual {max(e['matrix_free_residual']):.1e}, eigenvalue err vs float64 "
                 f"{e['matrix_free_eig_rel_err_vs_f64']:.1e}")
    lines.append(f"  ratio matrix-free / dense: {e['matrix_free_s'] / e['dense_s']:.1f}")
    return lines


def _tracking_table(t: dict[str, Any]) -> list[str]:
    lines = [""]
    lines.append(f"Tracking lambda_1..lambda_{t['k']} every step, n={t['n']} "
                 f"(median over {t['steps']} GD steps)")
    lines.append(f"  GD step {t['gd_step_s'] * 1e3:.1f} ms; NTKMonitor.measure "
                 f"{t['measure_s'] * 1e3:.1f} ms = kernel {t['ntk_s'] * 1e3:.1f} + warm "
                 f"eigensolve {t['eig_warm_s'] * 1e3:.1f} + loss split/forward")
    lines.append(f"  ratio measure / GD step: {t['ratio']:.2f} (paired median "
                 f"{t['ratio_paired_median']:.2f}); kernel + warm eigensolve alone: "
                 f"{t['ratio_kernel_plus_eig']:.2f}")
    lines.append(f"  cold eigensolve "
                 f"{t['eig_cold_s'] * 1e3:.1f} ms, previous ARPACK eigsh "
                 f"{t['arpack_eigsh_s'] * 1e3:.1f} ms")
    return lines


def targets(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in res.get("kernel", {}).get("sizes", {}).values():
        n = row["n"]
        if "speedup_vs_recipe" in row:
            out[f"n={n}: >=100x faster than the recipe"] = row["speedup_vs_recipe"] >= 100
        if "speedup_vs_nngeometry" in row:
            out[f"n={n}: >=1.3x faster than nngeometry"] = row["speedup_vs_nngeometry"] >= 1.3
        out[f"n={n}: max relative error <= 1e-5"] = row["ours_err"] <= 1e-5
        out[f"n={n}: max relative error <= 1e-5 outside ReLU-flip samples"] = (
            row["ours_err_outside_flips"] <= 1e-5)
    if "tracking" in res:
        out["tracking cost <= 2x a GD step"] = res["tracking"]["ratio"] <= 2.0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small smoke run (n = 250/500, about 10-30 s)")
    ap.add_argument("--json", metavar="PATH",
                    help="write all numbers to this JSON file (default with $BENCH_OUT set: "
                         "$BENCH_OUT/bench_ntk[-quick].json)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7, quick 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--wait-idle", type=float, metavar="S",
                    default=float(os.environ.get("BENCH_WAIT_IDLE", 0) or 0),
                    help="before each timed call wait up to S s for other processes to go quiet "
                         "(default: $BENCH_WAIT_IDLE or 0)")
    ap.add_argument("--only", choices=["kernel", "eig", "tracking"], action="append",
                    help="run only these sections (repeatable)")
    args = ap.parse_args(argv)
    QUIET["max_wait_s"] = args.wait_idle
    only = set(args.only or ["kernel", "eig", "tracking"])
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        sizes, recipe_sizes, eig_n, track_n, steps = [250, 500], [250], 500, 250, 6
    else:
        sizes, recipe_sizes, eig_n, track_n, steps = [1000, 4000], [1000], 4000, 1000, 15
    repeats = args.repeats or (3 if args.quick else 7)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    model = MLP(D_IN, 1, width=WIDTH, depth=DEPTH, activation="relu", bias=False,
                parameterization="ntk", seed=0)
    res: dict[str, Any] = {
        **record_header(args.threads, torch.__version__),
        "config": {"model": f"MLP {D_IN}-{WIDTH}-{WIDTH}-1 relu ntk no-bias float32",
                   "quick": args.quick, "repeats": repeats, "sizes": sizes},
    }
    if "kernel" in only:
        log("kernels ...")
        draws = {n: (2 if args.quick else (8 if n <= 1000 else 3)) for n in sizes}
        res["kernel"] = bench_kernels(model, sizes, recipe_sizes, repeats,
                                      2 if args.quick else 3, draws, log)
    if "eig" in only:
        log("eigenpairs ...")
        res["eig"] = bench_eig(model, eig_n, 5, repeats, 1 if args.quick else 3, log)
    if "tracking" in only:
        log("tracking ...")
        res["tracking"] = bench_tracking(track_n, 5, steps, log)
    res["targets"] = targets(res)
    finish(res, QUIET, t_start)
    print(table(res))
    print(targets_report(res["targets"]))
    print(footer(res, args.threads, torch.__version__))
    save_result(res, args.json, "bench_ntk", quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
