"""NTK baselines (issue 13, "Speed"): our empirical NTK against nngeometry, BackPACK and
neural-tangents' structured derivatives on the issue's CNN, and against the generic path and
nngeometry on WRN-16-4 and a small ViT, with the peak memory of each method.

Sections (``--only``, repeatable):

``cnn``  Conv(3->64, 3x3, pad 1) ReLU Conv(64->64, 3x3, pad 1) ReLU global-average-pool
         Linear(64->1), plain ``torch.nn``, PyTorch's initialisation, float32, x ~ N(0, I), inputs
         3x16x16 and 3x32x32, n = 256 and 1000. Full n x n kernel by
         (a) ``empirical_ntk(model, X)`` (the default, ``method="auto"``; which path auto takes
             is recorded), (a') ``method="rules"``, (b) ``method="jacobian"`` (the generic path),
         (c) nngeometry 0.4 ``GramMatrix``, (d) BackPACK ``BatchGrad`` per-sample gradients
             (``backward`` of ``f(X).sum()`` in chunks of ``--backpack-chunk`` samples) then
             ``G Gᵀ``, (e) neural-tangents 0.6.5 ``empirical_ntk_fn(...,
             implementation=STRUCTURED_DERIVATIVES)``, jitted, in a separate process of the JAX
             venv (``--jax-python``, default ``$JAX_PYTHON`` or ../jax-venv/bin/python next to the
             repository, as benchmarks/run.sh builds it with ``BENCH_JAX=1``):
             the same weights and inputs through an .npz file, compile time excluded,
             ``block_until_ready``; its median is compared with (a) timed ``repeats`` times just
             before and ``repeats`` times just after it in this process (both medians recorded).
         (a)-(d) are timed interleaved in this process (one warm-up call each, then ``repeats``
         rounds, the order reversed every other round), medians.
``wrn``  WRN-16-4 (catapults.models.WideResNet, its defaults: GroupNorm, NTK parameterisation,
         no bias), 3x32x32, n = 256.
``vit``  catapults.models.ViT defaults (width 64, depth 4, patch 4, 4 heads, MLP ratio 2),
         3x32x32, n = 256.
         For wrn/vit: (a) default, (a') rules and (b) jacobian (the one auto takes is not timed
         twice), (c) nngeometry and (d) BackPACK on a *plain twin* (each ScaledConv2d /
         ScaledLinear replaced by ``Scale(weight_scale)`` then ``nn.Conv2d`` / ``nn.Linear`` with
         the same weight: the same function of the same parameters, hence the same kernel)
         where they run; the exception is recorded where they do not.

Agreement: ``||K_method - K_default||_F / ||K_default||_F`` for every method.

Peak memory (``--memory``, default on for wrn/vit, ``--memory-cnn`` for the CNN): each method
once in a fresh subprocess of this script (``--probe``): it builds the same model and inputs,
resets the resident high-water mark just before the call (``echo 5 > /proc/self/clear_refs``),
reads its resident set (VmRSS), runs the call once, and reports the high-water mark (VmHWM)
minus that: the extra resident memory the call needed at its peak (K itself is part of it).
Not ``getrusage``'s ``ru_maxrss``: Linux carries it over fork and exec from the parent.
Compared with the size of K (``n² x 4`` bytes) and of the Jacobian J (``n x p x 4``).

Threads: ``torch.set_num_threads(--threads)`` (default 1: the machine this was written on has
2 cores shared with other work) for every torch method; the JAX process gets
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` for one thread,
``taskset -c 0-(T-1)`` for more.

Usage: ``python benchmarks/bench_ntk_baselines.py [--quick] [--json PATH] [--repeats R]
[--threads T] [--only cnn|wrn|vit] [--sizes 16:256,32:1000] [--no-jax] [--memory-cnn]``.
Writes ``$BENCH_OUT/bench_ntk_baselines[-quick].json`` (benchmarks/run.sh convention) and prints
markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_ntk import Scale  # the input scaling of the plain twins
from bench_ntk import nngeometry_gram as nngeometry_fn  # one nngeometry wrapper
from bench_ntk_rules import cnn
from machine import finish, footer, record_header, save_result, targets_report
from machine import wait_quiet as _wait_quiet
from torch import Tensor, nn

from catapults.models import ViT, WideResNet
from catapults.models.layers import ScaledConv2d, ScaledLinear
from catapults.ntk import empirical_ntk

HERE = Path(__file__).resolve().parent
JAX_SCRIPT = HERE / "jax_ntk_structured.py"
QUIET: dict[str, Any] = {"max_wait_s": 0.0, "waited_s": 0.0, "busy": []}
TORCH_METHODS = ("default", "rules", "jacobian", "nngeometry", "backpack")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- models ---------------------------------------------------------------------------------
def build(arch: str, side: int, n: int) -> tuple[nn.Module, Tensor]:
    """The model (seeded) and inputs x ~ N(0, I) of shape (n, 3, side, side), seeded by n, side."""
    torch.manual_seed(0)
    if arch == "cnn":
        model = cnn()
    elif arch == "wrn":
        model = WideResNet((3, side, side), 1, depth=16, widen_factor=4, seed=0)
    elif arch == "vit":
        model = ViT((3, side, side), 1, seed=0)
    else:
        raise ValueError(arch)
    model.eval()
    X = torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1000 * side + n))
    return model, X


def plain_twin(model: nn.Module) -> nn.Module:
    """A copy with each ScaledConv2d / ScaledLinear replaced by ``Scale(weight_scale)`` and a
    plain ``nn.Conv2d`` / ``nn.Linear`` holding the same weight (``conv(s x, W) = conv(x, s W)``):
    the same function of the same parameters. A bias with a scale other than 1 would change the
    parameter, hence the kernel: refused."""
    twin = copy.deepcopy(model)
    for mod in list(twin.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, (ScaledConv2d, ScaledLinear)):
                if child.bias is not None and child.bias_scale != 1.0:
                    raise ValueError("plain_twin: a scaled bias has no plain equivalent")
                if isinstance(child, ScaledConv2d):
                    plain: nn.Module = nn.Conv2d(
                        child.in_channels, child.out_channels, child.kernel_size,
                        stride=child.stride, padding=child.padding, dilation=child.dilation,
                        groups=child.groups, bias=child.bias is not None,
                        dtype=child.weight.dtype)
                else:
                    plain = nn.Linear(child.weight.shape[1], child.weight.shape[0],
                                      bias=child.bias is not None, dtype=child.weight.dtype)
                with torch.no_grad():
                    plain.weight.copy_(child.weight)
                    if child.bias is not None:
                        plain.bias.copy_(child.bias)
                setattr(mod, name, nn.Sequential(Scale(child.weight_scale), plain))
    return twin


def auto_choice(model: nn.Module, X: Tensor) -> dict[str, Any]:
    """Which path ``method="auto"`` takes (catapults.curvature.ntk's own choice, which also
    looks at the inputs: dense layers over positions do not count), or why unknown."""
    try:
        from catapults.curvature.ntk import _auto_method
        from catapults.curvature.ntk_rules.engine import plan
        pl = plan(model)
        return {"auto_takes": _auto_method(model, X, pl),
                "cheap_rule_fraction": pl.covered_fraction(model, cheap_only=True),
                "rule_fraction": pl.covered_fraction(model)}
    except Exception as exc:  # noqa: BLE001 - the engine's internals may move
        return {"auto_takes": None, "why": f"{type(exc).__name__}: {exc}"}


# ---- methods ----------------------------------------------------------------------------------
def backpack_fn(chunk: int) -> tuple[Callable[[nn.Module, Tensor], Tensor] | None, str]:
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad
    except Exception as exc:  # noqa: BLE001
        return None, f"backpack not importable: {type(exc).__name__}: {exc}"

    def run(model: nn.Module, X: Tensor) -> Tensor:
        # `model` is already extend()ed (see prepare); per-sample gradients of f(X).sum()
        params = [p for p in model.parameters() if p.requires_grad]
        rows = []
        for i in range(0, X.shape[0], chunk):
            xb = X[i:i + chunk]
            out = model(xb).sum()
            with backpack(BatchGrad()), warnings.catch_warnings():
                # "no extension for Module ... although the module has parameters": the check
                # below says which modules, once, instead of a warning per call
                warnings.simplefilter("ignore", UserWarning)
                out.backward()
            if any(getattr(p, "grad_batch", None) is None for p in params):
                kinds = sorted({type(m).__name__ for m in model.modules()
                                if any(getattr(p, "grad_batch", None) is None
                                       for p in m.parameters(recurse=False))})
                n_miss = sum(getattr(p, "grad_batch", None) is None for p in params)
                raise RuntimeError(f"BackPACK BatchGrad gave no per-sample gradient for "
                                   f"{n_miss} of {len(params)} parameter tensors (their "
                                   f"modules: {', '.join(kinds)})")
            rows.append(torch.cat([p.grad_batch.reshape(xb.shape[0], -1) for p in params], 1))
            for p in params:
                p.grad = None
                p.grad_batch = None
        with torch.no_grad():
            G = torch.cat(rows)
            return G @ G.T

    def prepare(model: nn.Module) -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return extend(model)

    run.prepare = prepare  # type: ignore[attr-defined]
    try:
        import importlib.metadata as md
        ver = md.version("backpack-for-pytorch")
    except Exception:  # noqa: BLE001
        ver = "?"
    return run, ver


def method_fns(arch: str, model: nn.Module, X: Tensor, names: list[str], backpack_chunk: int,
               info: dict[str, Any]) -> dict[str, Callable[[], Tensor]]:
    """Zero-argument callables for the methods that can be set up; why not, in ``info``."""
    fns: dict[str, Callable[[], Tensor]] = {}
    for k in names:
        if k in ("default", "rules", "jacobian"):
            meth = "auto" if k == "default" else k
            fns[k] = lambda meth=meth: empirical_ntk(model, X, method=meth)
            continue
        base = model if arch == "cnn" else None
        if base is None:
            try:
                base = plain_twin(model)
            except Exception as exc:  # noqa: BLE001
                info[f"{k}_error"] = f"plain twin: {type(exc).__name__}: {exc}"
                continue
        base = copy.deepcopy(base)  # hooks of BackPACK / nngeometry stay off our model
        if k == "nngeometry":
            fn, ver = nngeometry_fn()
        else:
            fn, ver = backpack_fn(backpack_chunk)
        info[f"{k}_version"] = ver
        if fn is None:
            info[f"{k}_error"] = ver
            continue
        if hasattr(fn, "prepare"):
            try:
                base = fn.prepare(base)
            except Exception as exc:  # noqa: BLE001
                info[f"{k}_error"] = f"{type(exc).__name__}: {exc}"[:500]
                continue
        fns[k] = lambda fn=fn, base=base: fn(base, X)
    return fns


def rel_fro(K: Tensor, ref: Tensor) -> float:
    K, ref = K.to(torch.float64).reshape(ref.shape), ref.to(torch.float64)
    return float(torch.linalg.norm(K - ref) / torch.linalg.norm(ref))


def interleaved(fns: dict[str, Callable[[], Tensor]], repeats: int, info: dict[str, Any]
                ) -> tuple[dict[str, list[float]], dict[str, Tensor]]:
    """One untimed warm-up call each (a method that raises is dropped, the error recorded),
    then ``repeats`` rounds, the order reversed every other round."""
    outs: dict[str, Tensor] = {}
    for k in list(fns):
        t0 = time.perf_counter()
        try:
            outs[k] = fns[k]()
        except Exception as exc:  # noqa: BLE001
            info[f"{k}_error"] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"    {k}: failed: {info[k + '_error'][:200]}")
            del fns[k]
            continue
        info[f"{k}_warmup_s"] = time.perf_counter() - t0
        gc.collect()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            _wait_quiet(QUIET)
            t0 = time.perf_counter()
            outs[k] = fns[k]()
            times[k].append(time.perf_counter() - t0)
            gc.collect()
    return times, outs


# ---- (e) neural-tangents in the JAX venv --------------------------------------------------------
def jax_python(arg: str | None) -> str | None:
    if arg:  # given explicitly: that one or none
        return arg if os.path.exists(arg) else None
    default = HERE.parent.parent / "jax-venv" / "bin" / "python"  # run.sh's default JAX_VENV
    for cand in (os.environ.get("JAX_PYTHON"), str(default)):
        if cand and os.path.exists(cand):
            return cand
    return None


def run_jax(py: str, model: nn.Module, X: Tensor, repeats: int, threads: int,
            timeout: float) -> tuple[dict[str, Any], Tensor | None]:
    sd = model.state_dict()
    tmp = Path(tempfile.mkdtemp(prefix="ntk_jax_"))
    try:
        np.savez(tmp / "in.npz", X=X.numpy(), conv1_w=sd["0.weight"].numpy(),
                 conv1_b=sd["0.bias"].numpy(), conv2_w=sd["2.weight"].numpy(),
                 conv2_b=sd["2.bias"].numpy(), lin_w=sd["6.weight"].numpy(),
                 lin_b=sd["6.bias"].numpy())
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        cmd = [py, str(JAX_SCRIPT), str(tmp / "in.npz"), str(tmp / "out.npz"),
               "--repeats", str(repeats)]
        if threads == 1:
            env["XLA_FLAGS"] = ("--xla_cpu_multi_thread_eigen=false "
                                "intra_op_parallelism_threads=1")
        elif shutil.which("taskset"):
            cmd = ["taskset", "-c", f"0-{threads - 1}", *cmd]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}, None
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            return {"error": f"exit {p.returncode}: {p.stderr.strip()[-800:]}"}, None
        res = json.loads(p.stdout.strip().splitlines()[-1])
        res["process_wall_s"] = wall
        res["env_XLA_FLAGS"] = env.get("XLA_FLAGS")
        res["cmd_prefix"] = cmd[:3] if cmd[0] == "taskset" else None
        K = torch.from_numpy(np.load(tmp / "out.npz")["K"])
        return res, K
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- peak memory in a fresh process -----------------------------------------------------------
def _status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> bool:
    """Reset VmHWM to the current resident set (``echo 5 > /proc/self/clear_refs``, Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Run inside a fresh process: one call of one method, its extra peak resident memory."""
    torch.set_num_threads(spec["threads"])
    model, X = build(spec["arch"], spec["side"], spec["n"])
    info: dict[str, Any] = {}
    fns = method_fns(spec["arch"], model, X, [spec["method"]], spec["backpack_chunk"], info)
    if spec["method"] not in fns:
        return {"error": info.get(f"{spec['method']}_error", "not set up")}
    gc.collect()
    # not getrusage's ru_maxrss: Linux keeps it across fork + exec, so a probe started by a
    # benchmark process that had grown to 10 GB reported 10 GB whatever it did (seen here)
    hwm_before_reset = _status_bytes("VmHWM")
    reset = _reset_hwm()
    before = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    try:
        K = fns[spec["method"]]()
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    wall = time.perf_counter() - t0
    peak = _status_bytes("VmHWM")
    return {"rss_before_bytes": before, "hwm_before_call_bytes": hwm_before_reset,
            "hwm_reset_before_call": reset, "hwm_bytes": peak,
            "peak_extra_bytes": peak - before, "single_call_s": wall,
            "K_bytes": K.numel() * K.element_size()}


def memory_of(arch: str, side: int, n: int, method: str, threads: int, backpack_chunk: int,
              timeout: float) -> dict[str, Any]:
    spec = {"arch": arch, "side": side, "n": n, "method": method, "threads": threads,
            "backpack_chunk": backpack_chunk}
    try:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe",
                            json.dumps(spec)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        return {"error": f"exit {p.returncode} (killed for memory if -9): "
                         f"{p.stderr.strip()[-400:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---- sections ---------------------------------------------------------------------------------
def bench_case(arch: str, side: int, n: int, args: argparse.Namespace, *, with_jax: bool,
               memory: bool) -> dict[str, Any]:
    model, X = build(arch, side, n)
    p = sum(v.numel() for v in model.parameters() if v.requires_grad)
    row: dict[str, Any] = {"arch": arch, "side": side, "n": n, "params": p,
                           "K_bytes": n * n * 4, "J_bytes": n * p * 4,
                           "loadavg_before": os.getloadavg()}
    row.update(auto_choice(model, X))
    names = ["default", "rules", "jacobian", "nngeometry", "backpack"]
    if row.get("auto_takes") in ("rules", "jacobian") and arch != "cnn":
        names.remove(row["auto_takes"])  # the same path as default: not timed twice
        row[f"{row['auto_takes']}_is_default"] = True
    names = [k for k in names if k not in args.skip]
    info: dict[str, Any] = {}
    fns = method_fns(arch, model, X, names, args.backpack_chunk, info)
    if args.memory_only:
        fns, with_jax = {}, False
    times, outs = interleaved(fns, args.repeats, info)
    row.update(info)
    ref = outs.get("default")
    for k, ts in times.items():
        row[f"{k}_s"] = statistics.median(ts)
        row[f"{k}_times"] = ts
        if ref is not None:
            row[f"{k}_rel_fro_vs_default"] = rel_fro(outs[k], ref)
    if row.get(f"{row.get('auto_takes')}_is_default") and "default_s" in row:
        row[f"{row['auto_takes']}_s"] = row["default_s"]
    if "default" in times:  # their time / ours in the same round (interleaved), median
        for k, ts in times.items():
            row[f"{k}_over_default_paired"] = statistics.median(
                [a / b for a, b in zip(ts, times["default"])])
    msg = ", ".join(f"{k} {row[k + '_s']:.2f} s" for k in times)
    log(f"  {arch} 3x{side}x{side} n={n} (p={p}, auto->{row.get('auto_takes')}): {msg}")
    if with_jax:
        py = jax_python(args.jax_python)
        if py is None:
            row["neural_tangents_error"] = ("no JAX venv (set JAX_PYTHON or --jax-python; "
                                            "benchmarks/run.sh builds it with BENCH_JAX=1)")
        else:
            def default_times() -> list[float]:
                times = []
                for _ in range(args.repeats):
                    _wait_quiet(QUIET)
                    t0 = time.perf_counter()
                    empirical_ntk(model, X)
                    times.append(time.perf_counter() - t0)
                return times

            before = default_times()
            jres, Kj = run_jax(py, model, X, args.repeats, args.threads, args.jax_timeout)
            after = default_times()
            row["default_around_jax_times"] = {"before": before, "after": after}
            row["default_around_jax_s"] = statistics.median(before + after)
            if Kj is None:
                row["neural_tangents_error"] = jres["error"]
                log(f"    neural-tangents failed: {jres['error'][:300]}")
            else:
                row["neural_tangents"] = jres
                row["neural_tangents_s"] = jres["median_s"]
                if ref is not None:
                    row["neural_tangents_rel_fro_vs_default"] = rel_fro(Kj, ref)
                log(f"    neural-tangents {jres['median_s']:.2f} s (compile+first "
                    f"{jres['first_call_s']:.1f} s); ours around it "
                    f"{row['default_around_jax_s']:.2f} s")
    del outs, fns
    gc.collect()
    if memory:
        mem = {}
        for k in [k for k in TORCH_METHODS if k in names]:
            mem[k] = memory_of(arch, side, n, k, args.threads, args.backpack_chunk,
                               args.probe_timeout)
            m = mem[k]
            log(f"    memory {k}: " + (m["error"][:200] if "error" in m else
                                       f"+{m['peak_extra_bytes'] / 2**20:.0f} MiB "
                                       f"({m['single_call_s']:.1f} s)"))
        row["memory"] = mem
    row["loadavg_after"] = os.getloadavg()
    return row


# ---- report -----------------------------------------------------------------------------------
def _f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def tables(res: dict[str, Any]) -> str:
    lines = []
    cnn_rows = [r for r in res["cases"] if r["arch"] == "cnn"]
    if cnn_rows:
        lines += ["Time (median s) of the full n x n kernel; ratios = their time / our default's "
                  "time (> 1: ours is faster); neural-tangents against our default timed "
                  "around it", "",
                  "| input | n | auto takes | default | rules | jacobian | nngeometry | BackPACK "
                  "| neural-tangents SD (ours around it) | x nngeometry | x BackPACK "
                  "| x neural-tangents |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in cnn_rows:
            d = r.get("default_s")
            nt_s, d_nt = r.get("neural_tangents_s"), r.get("default_around_jax_s")
            lines.append(
                f"| 3x{r['side']}x{r['side']} | {r['n']} | {r.get('auto_takes')} | {_f(d)} | "
                f"{_f(r.get('rules_s'))} | {_f(r.get('jacobian_s'))} | "
                f"{_f(r.get('nngeometry_s'))} | {_f(r.get('backpack_s'))} | "
                f"{_f(nt_s)} ({_f(d_nt)}) | "
                f"{_f(r['nngeometry_s'] / d if d and r.get('nngeometry_s') else None)} | "
                f"{_f(r['backpack_s'] / d if d and r.get('backpack_s') else None)} | "
                f"{_f(nt_s / d_nt if nt_s and d_nt else None)} |")
        lines += ["", "Kernel agreement: ||K - K_default||_F / ||K_default||_F", "",
                  "| input | n | rules | jacobian | nngeometry | BackPACK | neural-tangents |",
                  "|---|---|---|---|---|---|---|"]
        for r in cnn_rows:
            lines.append(f"| 3x{r['side']}x{r['side']} | {r['n']} | " + " | ".join(
                _f(r.get(f"{k}_rel_fro_vs_default"), ".1e")
                for k in ("rules", "jacobian", "nngeometry", "backpack", "neural_tangents"))
                + " |")
    other = [r for r in res["cases"] if r["arch"] != "cnn"]
    if other:
        lines += ["", "| model | p | n | auto takes | default s | rules s | jacobian s "
                  "| nngeometry s | BackPACK s | rules/default | jacobian/default "
                  "| nngeometry/default | BackPACK/default |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in other:
            d = r.get("default_s")

            def ratio(k: str, r: dict[str, Any] = r, d: Any = d) -> str:
                v = r.get(f"{k}_s")
                return _f(v / d if v and d else None)
            lines.append(
                f"| {r['arch']} | {r['params']} | {r['n']} | {r.get('auto_takes')} | {_f(d)} | "
                f"{_f(r.get('rules_s'))} | {_f(r.get('jacobian_s'))} | "
                f"{_f(r.get('nngeometry_s'))} | {_f(r.get('backpack_s'))} | {ratio('rules')} | "
                f"{ratio('jacobian')} | {ratio('nngeometry')} | {ratio('backpack')} |")
        lines += ["", "| model | n | rules | jacobian | nngeometry | BackPACK |",
                  "|---|---|---|---|---|---|"]
        for r in other:
            lines.append(f"| {r['arch']} | {r['n']} | " + " | ".join(
                _f(r.get(f"{k}_rel_fro_vs_default"), ".1e")
                for k in ("rules", "jacobian", "nngeometry", "backpack")) + " |")
    mem_rows = [r for r in res["cases"] if "memory" in r]
    if mem_rows:
        lines += ["", "Peak extra resident memory of one call (fresh process; MiB) against the "
                  "size of K (n² x 4 B) and of J (n x p x 4 B)", "",
                  "| model | input | n | K | J | default | rules | jacobian | nngeometry "
                  "| BackPACK |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in mem_rows:
            cells = []
            for k in TORCH_METHODS:
                m = r["memory"].get(k)
                if m is None:
                    cells.append("-")
                elif "error" in m:
                    cells.append("failed")
                else:
                    cells.append(f"{m['peak_extra_bytes'] / 2**20:.0f} "
                                 f"({m['peak_extra_bytes'] / r['K_bytes']:.0f}x K)")
            lines.append(f"| {r['arch']} | 3x{r['side']}x{r['side']} | {r['n']} | "
                         f"{r['K_bytes'] / 2**20:.2f} | {r['J_bytes'] / 2**20:.0f} | "
                         + " | ".join(cells) + " |")
    errs = [(r, k) for r in res["cases"] for k in r if k.endswith("_error")]
    if errs:
        lines += ["", "Did not run:"]
        lines += [f"- {r['arch']} 3x{r['side']}x{r['side']} n={r['n']} {k[:-6]}: "
                  f"{str(r[k])[:300]}" for r, k in errs]
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> dict[str, bool]:
    out = {}
    for r in res["cases"]:
        if r["arch"] != "cnn" or "default_s" not in r:
            continue
        tag = f"cnn 3x{r['side']}x{r['side']} n={r['n']}"
        for k, name in (("nngeometry", "nngeometry"), ("backpack", "BackPACK")):
            if f"{k}_s" in r:
                out[f"{tag}: default >= 5x faster than {name}"] = (
                    r[f"{k}_s"] / r["default_s"] >= 5)
        if "neural_tangents_s" in r:
            out[f"{tag}: default >= 5x faster than neural-tangents SD"] = (
                r["neural_tangents_s"] / r["default_around_jax_s"] >= 5)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: CNN 3x16x16 n = 64 and WRN/ViT at n = 16, once, no memory")
    ap.add_argument("--json", metavar="PATH", help="result file (default with $BENCH_OUT set: "
                    "$BENCH_OUT/bench_ntk_baselines[-quick].json)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="threads for every method (default 1)")
    ap.add_argument("--only", choices=["cnn", "wrn", "vit"], action="append")
    ap.add_argument("--sizes", default=None,
                    help="CNN cases side:n,... (default 16:256,16:1000,32:256,32:1000)")
    ap.add_argument("--n-big", type=int, default=None, help="n for WRN/ViT (default 256)")
    ap.add_argument("--skip", action="append", default=[], choices=list(TORCH_METHODS),
                    help="methods not to run (repeatable)")
    ap.add_argument("--backpack-chunk", type=int, default=256,
                    help="samples per BackPACK backward pass (default 256)")
    ap.add_argument("--no-jax", action="store_true", help="skip neural-tangents")
    ap.add_argument("--jax-python", default=None,
                    help="python of the JAX venv (default $JAX_PYTHON or ../jax-venv)")
    ap.add_argument("--jax-timeout", type=float, default=1800)
    ap.add_argument("--no-memory", action="store_true", help="no peak-memory probes")
    ap.add_argument("--memory-cnn", action="store_true", help="peak-memory probes on the CNN too")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the peak-memory probes (no timings, no neural-tangents)")
    ap.add_argument("--probe-timeout", type=float, default=1800)
    ap.add_argument("--wait-idle", type=float, metavar="S",
                    default=float(os.environ.get("BENCH_WAIT_IDLE", 0) or 0),
                    help="before each timed call wait up to S s for other processes to go quiet "
                         "(default: $BENCH_WAIT_IDLE or 0)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return 0
    QUIET["max_wait_s"] = args.wait_idle
    torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (1 if args.quick else 3)
    only = args.only or ["cnn", "wrn", "vit"]
    sizes = args.sizes or ("16:64" if args.quick else "16:256,16:1000,32:256,32:1000")
    n_big = args.n_big or (16 if args.quick else 256)
    t_start = time.perf_counter()
    res: dict[str, Any] = {
        **record_header(args.threads, torch.__version__),
        "config": {"quick": args.quick, "repeats": args.repeats, "sizes": sizes,
                   "n_big": n_big, "backpack_chunk": args.backpack_chunk, "skip": args.skip},
        "cases": [],
    }
    if "cnn" in only:
        log("CNN ...")
        for item in sizes.split(","):
            side, n = (int(v) for v in item.split(":"))
            res["cases"].append(bench_case("cnn", side, n, args, with_jax=not args.no_jax,
                                           memory=((args.memory_cnn or args.memory_only)
                                                   and not args.no_memory)))
            save_result(res, args.json, "bench_ntk_baselines", quick=args.quick)  # partial
    for arch in ("wrn", "vit"):
        if arch in only:
            log(f"{arch} ...")
            res["cases"].append(bench_case(arch, 32, n_big, args, with_jax=False,
                                           memory=args.memory_only or not (args.no_memory
                                                                          or args.quick)))
            save_result(res, args.json, "bench_ntk_baselines", quick=args.quick)
    res["targets"] = targets(res)
    finish(res, QUIET, t_start)
    print(tables(res))
    print(targets_report(res["targets"], "Targets (issue 13)"))
    print(footer(res, args.threads, torch.__version__))
    save_result(res, args.json, "bench_ntk_baselines", quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
