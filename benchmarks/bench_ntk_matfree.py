"""Matrix-free top-5 NTK eigenpairs (issue 13) against curvlinops' GGN operator with scipy's
``eigsh``.

Without forming K: ours is ``catapults.ntk.top_eigenpairs(model, X, 5, method="lanczos")``
(thick-restarted Lanczos on ``K v = J (Jᵀ v)`` in sample space, ``N = n·c``, one vector per
product), with its default products (``product="auto"``: the layer rules' factors formed once
by one forward and one backward pass, then two matrix products per layer and vector; the
setup is inside the timing) and with ``product="autograd"`` (one VJP and one JVP through the
network per vector, the previous default); curvlinops 3.0.1 is
``eigsh(GGNLinearOperator(model, MSELoss(), params, [(X, y)]).to_scipy(), k=5, which="LA")``
(ARPACK in parameter space, ``p`` entries per vector). For the mean MSE, ``G = (2/N) Jᵀ J``
and ``K = J Jᵀ`` have the same non-zero spectrum up to the factor: ``λ(G) = 2 λ(K) / N``.

Accuracy, each method in its own space against float64 operators built from a float64 copy
of the same weights: the relative residual ``‖K v − λ v‖ / λ`` of ours (``K64`` dense) and
``‖G u − θ u‖ / θ`` of curvlinops' (its GGN operator in float64), and for both the relative
error of the eigenvalues against ``eigh(K64)`` (``λ = N θ / 2``). A residual does not carry
over between the spaces: mapping ``v`` to ``u = Jᵀ v / ‖Jᵀ v‖`` multiplies it by up to
``√(λ_1 / λ_i)``, large for a CNN whose top eigenvalue is thousands of times its fifth. The
baseline runs at two ``eigsh`` tolerances (1e-6 and the default 0, machine precision).

Models (float32, one process, same thread count, methods interleaved, medians of repeats):
the benchmark MLP (``MLP(100, 1, width=1024, depth=3, relu, no bias, ntk)``, p = 1.15M,
x ~ N(0, I), y = x1·x2) at n = 4000, and the issue's CNN ``Conv(3→64, 3×3, pad 1) ReLU
Conv(64→64, 3×3, pad 1) ReLU GAP Linear(64→1)`` on 3×16×16 inputs at n = 1000.

Usage: ``python benchmarks/bench_ntk_matfree.py [--quick] [--threads T] [--repeats R]
[--json PATH] [--wait-idle S]`` (run in .bench-venv: it needs curvlinops; ``$BENCH_OUT`` and
``$BENCH_WAIT_IDLE`` as for every bench_*.py).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_ntk_rules import cnn as issue_cnn
from machine import finish, footer, record_header, save_result
from machine import wait_quiet as _wait_quiet
from torch import Tensor, nn

import catapults.curvature.ntk as ntk_mod
from catapults.models import MLP
from catapults.ntk import empirical_ntk, top_eigenpairs

K_TOP = 5
QUIET: dict[str, Any] = {"max_wait_s": 0.0, "waited_s": 0.0, "busy": [], "threshold": 0.1}
COUNT = {"columns": 0}
_ntk_matvec = ntk_mod.ntk_matvec


def _counting_matvec(model: nn.Module, X: Tensor, **kw: Any) -> Callable[[Tensor], Tensor]:
    """``ntk_matvec`` that counts the kernel-vector products (columns) it computes."""
    mv = _ntk_matvec(model, X, **kw)

    def counted(V: Tensor) -> Tensor:
        COUNT["columns"] += 1 if V.dim() == 1 else V.shape[1]
        return mv(V)

    return counted


def _install_counter() -> None:
    import catapults.curvature.spectrum as spectrum

    spectrum.ntk_matvec = _counting_matvec  # the solver looks it up in its module


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return issue_cnn()


def problems(quick: bool) -> dict[str, tuple[nn.Module, Tensor, Tensor]]:
    g = torch.Generator().manual_seed(7)
    n_mlp, n_cnn = (1000, 250) if quick else (4000, 1000)
    X = torch.randn(n_mlp, 100, generator=g)
    mlp = MLP(100, 1, width=1024, depth=3, activation="relu", bias=False,
              parameterization="ntk", seed=1)
    Xc = torch.randn(n_cnn, 3, 16, 16, generator=g)
    return {f"MLP n={n_mlp}": (mlp, X, (X[:, 0] * X[:, 1]).reshape(-1, 1)),
            f"CNN 3x16x16 n={n_cnn}": (cnn(), Xc, torch.randn(n_cnn, 1, generator=g))}


def ggn_operator(model: nn.Module, X: Tensor, y: Tensor):
    from curvlinops import GGNLinearOperator

    params = [q for q in model.parameters() if q.requires_grad]
    return GGNLinearOperator(model, nn.MSELoss(), params, [(X, y)], check_deterministic=False)


def run_curvlinops(model: nn.Module, X: Tensor, y: Tensor, tol: float
                   ) -> tuple[list[float], Tensor, int]:
    """``eigsh`` on the scipy view of curvlinops' GGN: ``(θ, U (p, k), products)``."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    G = ggn_operator(model, X, y).to_scipy()
    calls = [0]

    def mv(v):
        calls[0] += 1 if v.ndim == 1 else v.shape[1]
        return G @ v

    op = LinearOperator(G.shape, matvec=mv, matmat=mv, dtype=G.dtype)
    start = torch.randn(G.shape[0], generator=torch.Generator().manual_seed(0)).numpy()
    vals, vecs = eigsh(op, k=K_TOP, which="LA", tol=tol, v0=start.astype(G.dtype))
    order = vals.argsort()[::-1]
    return vals[order].tolist(), torch.from_numpy(vecs[:, order].copy()), calls[0]


def run_ours(model: nn.Module, X: Tensor, tol: float, product: str
             ) -> tuple[list[float], Tensor, int]:
    """``top_eigenpairs(method="lanczos")``: ``(λ(K), V (N, k), products)``."""
    c0 = COUNT["columns"]
    vals, vecs = top_eigenpairs(model, X, K_TOP, method="lanczos", tol=tol, product=product)
    return vals.tolist(), vecs, COUNT["columns"] - c0


def reference(model: nn.Module, X: Tensor, y: Tensor) -> dict[str, Any]:
    """The float64 yardsticks: the dense kernel ``K64`` of a float64 copy of the model, its top
    eigenvalues (``torch.linalg.eigh``), and curvlinops' GGN operator on that copy."""
    m64 = copy.deepcopy(model).double()
    K64 = empirical_ntk(m64, X.double())
    lam = torch.linalg.eigvalsh(K64).flip(0)[:K_TOP]
    return {"K64": K64, "lambda": lam, "G64": ggn_operator(m64, X.double(), y.double()),
            "N": K64.shape[0]}


def accuracy(ref: dict[str, Any], vals: list[float], vecs: Tensor, space: str
             ) -> dict[str, list[float]]:
    """Each method in its own space, against the float64 operators: the relative residuals
    ``‖K v − λ v‖ / λ`` (ours, ``v`` in sample space) or ``‖G u − θ u‖ / θ`` (curvlinops, ``u``
    in parameter space), and the relative eigenvalue errors against ``eigh(K64)`` (``θ`` is
    mapped to ``λ = N θ / 2``)."""
    V = vecs.double()
    V = V / V.norm(dim=0)
    th = torch.tensor(vals, dtype=torch.float64)
    if space == "K":
        R = ref["K64"] @ V - V * th
        lam = th
    else:
        R = (ref["G64"] @ V) - V * th
        lam = th * ref["N"] / 2
    return {"residuals": (R.norm(dim=0) / th.abs()).tolist(),
            "eig_rel_errors": ((lam - ref["lambda"]).abs() / ref["lambda"]).tolist()}


def bench(name: str, model: nn.Module, X: Tensor, y: Tensor, repeats: int,
          log: Callable[[str], None]) -> dict[str, Any]:
    ref = reference(model, X, y)
    methods: dict[str, Callable[[], tuple[list[float], Tensor, int]]] = {
        "ours (default: factor products, tol 1e-8)": lambda: run_ours(model, X, 1e-8, "auto"),
        "ours (autograd products, tol 1e-8)": lambda: run_ours(model, X, 1e-8, "autograd"),
        "curvlinops + eigsh (tol 1e-6)": lambda: run_curvlinops(model, X, y, 1e-6),
        "curvlinops + eigsh (tol 0)": lambda: run_curvlinops(model, X, y, 0.0),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    out: dict[str, Any] = {"N": ref["N"], "p": sum(q.numel() for q in model.parameters()),
                           "lambda_ref": ref["lambda"].tolist(), "methods": {}}
    for r in range(repeats):
        for m, fn in (methods.items() if r % 2 == 0 else reversed(methods.items())):
            _wait_quiet(QUIET)
            t0 = time.perf_counter()
            vals, vecs, products = fn()
            times[m].append(time.perf_counter() - t0)
            if r == 0:
                acc = accuracy(ref, vals, vecs, "K" if m.startswith("ours") else "G")
                out["methods"][m] = {"values": vals, "products": products, **acc}
            log(f"  {name} {m}: {times[m][-1]:.2f} s")
    for m in methods:
        out["methods"][m]["s"] = statistics.median(times[m])
        out["methods"][m]["all_s"] = times[m]
    base = out["methods"]["curvlinops + eigsh (tol 1e-6)"]["s"]
    for m in methods:
        out["methods"][m]["speedup_vs_curvlinops_1e-6"] = base / out["methods"][m]["s"]
    return out


def report(res: dict[str, Any]) -> str:
    lines = []
    for name, r in res["problems"].items():
        lines.append(f"\n{name} (N = {r['N']}, p = {r['p']})")
        lines.append("| method | median s | products | residuals (own space, float64) | "
                     "max eigenvalue error | speed-up vs eigsh 1e-6 |")
        lines.append("|---|---:|---:|---|---:|---:|")
        for m, v in r["methods"].items():
            res_ = ", ".join(f"{x:.1e}" for x in v["residuals"])
            lines.append(f"| {m} | {v['s']:.2f} | {v['products']} | {res_} | "
                         f"{max(v['eig_rel_errors']):.1e} | "
                         f"{v['speedup_vs_curvlinops_1e-6']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (n = 1000 / 250)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 3, quick 1)")
    ap.add_argument("--json", metavar="PATH", help="write all numbers here")
    ap.add_argument("--wait-idle", type=float, metavar="S",
                    default=float(os.environ.get("BENCH_WAIT_IDLE", 0) or 0))
    args = ap.parse_args(argv)
    try:
        import curvlinops  # noqa: F401
    except ImportError as exc:
        print(f"bench_ntk_matfree: curvlinops not installed ({exc}); skipped", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    cores = os.cpu_count() or 1
    QUIET["max_wait_s"] = args.wait_idle
    QUIET["threshold"] = max(0.1, 1 - args.threads / cores + 0.1)
    _install_counter()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    res: dict[str, Any] = {
        **record_header(args.threads, torch.__version__),
        "problems": {}}
    for name, (model, X, y) in problems(args.quick).items():
        res["problems"][name] = bench(name, model, X, y, args.repeats or
                                      (1 if args.quick else 3), log)
    finish(res, QUIET, t0)
    print(report(res))
    print(footer(res, args.threads, torch.__version__))
    save_result(res, args.json, "bench_ntk_matfree", quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
