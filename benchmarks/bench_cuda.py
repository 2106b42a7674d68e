"""CUDA check and timings for the NTK engine (run by scripts/gpu_check.sh on a machine with a GPU).

1. **Exactness on the GPU.** For the issue's CNN, a 10-output CNN, WRN-16-4 (GroupNorm), a small
   ViT and the benchmark MLP, float32 on the GPU against a float64 ``vmap(jacrev)`` reference
   (tests/references.py, computed on the GPU in float64): every ``empirical_ntk`` method
   (``kind="full"`` and ``"trace"``), the factor and autograd products ``K V``, the top-5
   eigenvalues (dense and matrix-free), the critical rate and the AGOP; relative Frobenius
   errors; the CNN also under PyTorch's default TF32 convolutions (which the curvature
   functions turn off inside).
2. **Timings on the GPU** (CUDA-synchronised wall time, median of ``--repeats`` after one
   warm-up): the issue's CNN at 16x16 / 32x32 and n = 256 / 1000 by each method and by the
   generic path as filed (chunks of 64); WRN-16-4 and the ViT at n = 256 with peak GPU memory
   against the size of K; the MLP at n = 1000 / 4000 against its FLOP floor at the GPU's float32
   GEMM rate measured in the same process; matrix-free top-5 eigenpairs at n = 4000 (MLP) and
   n = 1000 (CNN) against dense K + eigh.

    python benchmarks/bench_cuda.py [--repeats 3] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_ntk_rules import cnn, mlp_flops  # noqa: E402 (the issue's CNN, the MLP's FLOPs)
from references import vmap_jacobian  # noqa: E402 (the suite's float64 reference)

from catapults.agop import agop  # noqa: E402
from catapults.curvature.spectrum import critical_lr, top_eigenpairs  # noqa: E402
from catapults.models import MLP, ViT, WideResNet  # noqa: E402
from catapults.ntk import empirical_ntk, ntk_matvec  # noqa: E402

DEV = torch.device("cuda")


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def build(name: str, n: int, side: int = 32) -> tuple[nn.Module, Tensor]:
    """A seeded model in eval mode on the GPU and inputs ``x ~ N(0, I)``."""
    torch.manual_seed(0)
    if name == "mlp":
        model: nn.Module = MLP(100, 1, width=1024, depth=3)
        X = torch.randn(n, 100)
    else:
        X = torch.randn(n, 3, side, side)
        model = {"cnn": lambda: cnn(), "cnn10": lambda: cnn(10),
                 "wrn": lambda: WideResNet((3, side, side), 1, depth=16, widen_factor=4,
                                           norm="group", seed=0),
                 "vit": lambda: ViT((3, side, side), 1, seed=0)}[name]()
    return model.eval().to(DEV), X.to(DEV)


def rel(a: Tensor, ref: Tensor) -> float:
    a, ref = a.double().to(ref.device), ref
    return float((a - ref).norm() / ref.norm())


def sync_time(repeats: int, fn: Callable[..., Any], *args: Any, **kwargs: Any
              ) -> tuple[float, Any]:
    """Median wall time of ``fn(*args, **kwargs)`` after one warm-up, and its last result."""
    out = fn(*args, **kwargs)  # warm-up (kernels, cuDNN plans)
    times = []
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


# ---- 1. exactness -------------------------------------------------------------------------------
def exactness(quick: bool) -> list[dict[str, Any]]:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cases = [("mlp", 256, 32), ("cnn", 64, 16), ("cnn10", 32, 16), ("wrn", 16, 16),
             ("vit", 32, 16)]
    rows = []
    for name, n, side in cases:
        model, X = build(name, n, side)
        m64 = _double(model)
        X64 = X.double()
        J = vmap_jacobian(m64, X64)
        K64 = J @ J.T
        nc = K64.shape[0]
        c = nc // n
        Kt64 = K64.view(n, c, n, c).diagonal(dim1=1, dim2=3).sum(-1)
        row: dict[str, Any] = {"model": name, "n": n, "side": side, "c": c,
                               "p": sum(p.numel() for p in model.parameters())}
        for method in ("auto", "rules", "jacobian", "matvec"):
            try:
                K = empirical_ntk(model, X, method=method)
                assert K.device.type == DEV.type and K.dtype == torch.float32
                row[f"K_{method}"] = rel(K, K64)
                if c > 1:
                    row[f"Ktrace_{method}"] = rel(empirical_ntk(model, X, method=method,
                                                                kind="trace"), Kt64)
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                row[f"K_{method}"] = f"{type(exc).__name__}: {exc}"[:160]
        V = torch.randn(nc, 3, device=DEV, dtype=torch.float64)
        for product in ("factors", "autograd"):
            try:
                mv = ntk_matvec(model, X, product=product)
                row[f"KV_{product}"] = rel(mv(V.float()), K64 @ V)
            except Exception as exc:  # noqa: BLE001
                row[f"KV_{product}"] = f"{type(exc).__name__}: {exc}"[:160]
        lam64 = torch.linalg.eigvalsh(K64).flip(0)[:5]
        for method in ("dense", "lanczos"):
            vals, _ = top_eigenpairs(model, X, 5, method=method)
            row[f"top5_{method}"] = float(((vals.double().cpu() - lam64.cpu()).abs()
                                           / lam64[0].cpu()).max())
        row["critical_lr"] = abs(critical_lr(model, X) * float(lam64[0]) / nc - 1.0)
        if name in ("mlp", "cnn", "vit"):
            G = agop(model, X)
            Xg = X64.clone().requires_grad_(True)
            g = torch.autograd.functional.jacobian(_summed(m64), Xg)
            F = g.reshape(c, n, -1).transpose(0, 1).reshape(n * c, -1)
            row["agop"] = rel(G, F.T @ F / n)
        if name == "cnn":
            # under PyTorch's default TF32 convolutions, which the curvature functions turn
            # off inside (8.3e-4 on an H200 before they did)
            torch.backends.cudnn.allow_tf32 = True
            K = empirical_ntk(model, X, method="jacobian")
            row["K_jacobian_tf32_default"] = rel(K, K64)
            torch.backends.cudnn.allow_tf32 = False
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _double(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double()


def _summed(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``x ↦ Σ_i f(x)_i`` (shape ``(c,)``): its Jacobian holds every sample's input gradients."""
    return lambda x: model(x).sum(0)


# ---- 2. timings ---------------------------------------------------------------------------------
def filed_generic(model: nn.Module, X: Tensor) -> Tensor:
    return empirical_ntk(model, X, method="jacobian", chunk_size=64)


def timings(repeats: int, quick: bool) -> list[dict[str, Any]]:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    sizes = [(16, 256), (32, 1000)] if quick else [(16, 256), (16, 1000), (32, 256), (32, 1000)]
    for side, n in sizes:
        model, X = build("cnn", n, side)
        row: dict[str, Any] = {"case": f"cnn {side}x{side} n={n}"}
        for label, method in [("auto", "auto"), ("rules", "rules"), ("jacobian", "jacobian")]:
            row[label], _ = sync_time(repeats, empirical_ntk, model, X, method=method)
        row["filed"], _ = sync_time(repeats, filed_generic, model, X)
        rows.append(row)
        print(json.dumps(row), flush=True)
    for name in ("wrn", "vit"):
        model, X = build(name, 256, 32)
        row = {"case": f"{name} 32x32 n=256", "K_MiB": 256 * 256 * 4 / 2**20}
        for label, method in [("auto", "auto"), ("rules", "rules"), ("jacobian", "jacobian")]:
            base = _reset_peak()
            try:
                row[label], _ = sync_time(repeats, empirical_ntk, model, X, method=method)
                row[f"{label}_peak_MiB"] = _peak(base)
            except Exception as exc:  # noqa: BLE001
                row[label] = f"{type(exc).__name__}: {exc}"[:160]
        rows.append(row)
        print(json.dumps(row), flush=True)
    a = torch.randn(4000, 1024, device=DEV)
    gemm_s, _ = sync_time(5, torch.mm, a, a.T)
    rate = 2 * 4000 * 4000 * 1024 / gemm_s
    for n in ([4000] if quick else [1000, 4000]):
        model, X = build("mlp", n)
        t, _ = sync_time(repeats, empirical_ntk, model, X)
        flops = mlp_flops(n)
        row = {"case": f"mlp n={n}", "auto": t, "gemm_TFLOPs": rate / 1e12,
               "floor_s": flops / rate, "over_floor": t / (flops / rate)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for name, n, side in [("mlp", 4000, 32), ("cnn", 1000, 16)]:
        model, X = build(name, n, side)
        row = {"case": f"top-5 {name} n={n}"}
        row["dense_eigh"], _ = sync_time(repeats, top_eigenpairs, model, X, 5, method="dense")
        for product in ("factors", "autograd"):
            row[f"lanczos_{product}"], _ = sync_time(repeats, top_eigenpairs, model, X, 5,
                                                     method="lanczos", product=product)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _reset_peak() -> int:
    if DEV.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak(base: int) -> float | None:
    return (torch.cuda.max_memory_allocated() - base) / 2**20 if DEV.type == "cuda" else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
    args = ap.parse_args(argv)
    global DEV
    DEV = torch.device(args.device)
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("bench_cuda: skipped, no CUDA device (scripts/gpu_check.sh runs it on a GPU; "
              "--device cpu for a dry run)")
        return 0
    if args.json is None and os.environ.get("BENCH_OUT"):
        name = "cuda-quick.json" if args.quick else "cuda.json"
        args.json = str(Path(os.environ["BENCH_OUT"]) / name)
    info = {"torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if DEV.type == "cuda" else "none (dry run)",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(info), flush=True)
    res = {"info": info, "exactness": exactness(args.quick),
           "timings": timings(args.repeats, args.quick)}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    bad = [(r["model"], k, v) for r in res["exactness"] for k, v in r.items()
           if k.startswith(("K", "top5", "agop", "critical"))
           and (not isinstance(v, float) or v > 2e-4)]
    print("exactness above 2e-4 or failed:", bad or "none")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
