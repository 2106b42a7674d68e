"""neural-tangents' structured derivatives on the issue-13 CNN (baseline (e) of
bench_ntk_baselines.py). Deliberately not named bench_*.py: run.sh does not run it;
bench_ntk_baselines.py starts it in a separate process with the JAX venv's python (JAX is not
in the project's environment), from the torch weights and inputs it exported to an .npz file.

The CNN as a pure jax function with the torch layouts (NCHW inputs, OIHW kernels, Linear weight
``(out, in)``): Conv(3->64, 3x3, pad 1) ReLU Conv(64->64, 3x3, pad 1) ReLU mean over H, W,
Linear(64->1). Kernel ``nt.empirical_ntk_fn(f, vmap_axes=0, implementation=STRUCTURED_DERIVATIVES)``
(output axis traced: ``c = 1``, so it is the full ``n x n`` kernel), jitted; the first call
(compile + run) is timed apart, then ``repeats`` calls with ``block_until_ready``.

    python jax_ntk_structured.py IN.npz OUT.npz --repeats R

Threads: the caller sets ``XLA_FLAGS`` (``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`` for one thread) and, for more, ``taskset``.
IN.npz: ``X`` and the parameters ``conv1_w conv1_b conv2_w conv2_b lin_w lin_b``.
OUT.npz: ``K``; the timings go to stdout as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types

# neural_tangents/__init__ imports neural_tangents.experimental, whose only content is the
# TensorFlow port (jax2tf, tf2jax, tensorflow: not installed, not needed here): stand in an
# empty module for it so that `import neural_tangents` does not pull TensorFlow.
sys.modules.setdefault("neural_tangents.experimental",
                       types.ModuleType("neural_tangents.experimental"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from neural_tangents import NtkImplementation  # noqa: E402


def cnn_apply(params: dict, x: jnp.ndarray) -> jnp.ndarray:
    dn = ("NCHW", "OIHW", "NCHW")
    h = lax.conv_general_dilated(x, params["conv1_w"], (1, 1), ((1, 1), (1, 1)),
                                 dimension_numbers=dn) + params["conv1_b"][None, :, None, None]
    h = jax.nn.relu(h)
    h = lax.conv_general_dilated(h, params["conv2_w"], (1, 1), ((1, 1), (1, 1)),
                                 dimension_numbers=dn) + params["conv2_b"][None, :, None, None]
    h = jax.nn.relu(h).mean(axis=(2, 3))
    return h @ params["lin_w"].T + params["lin_b"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = np.load(args.inp)
    X = jnp.asarray(data["X"], dtype=jnp.float32)
    params = {k: jnp.asarray(data[k], dtype=jnp.float32)
              for k in ("conv1_w", "conv1_b", "conv2_w", "conv2_b", "lin_w", "lin_b")}
    kfn = jax.jit(nt.empirical_ntk_fn(
        cnn_apply, vmap_axes=0, implementation=NtkImplementation.STRUCTURED_DERIVATIVES))
    t0 = time.perf_counter()
    K = kfn(X, None, params).block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        K = kfn(X, None, params).block_until_ready()
        times.append(time.perf_counter() - t0)
    K = np.asarray(K).reshape(X.shape[0], X.shape[0])
    np.savez(args.out, K=K)
    print(json.dumps({"median_s": statistics.median(times), "times": times,
                      "first_call_s": first, "jax": jax.__version__,
                      "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                      "neural_tangents": getattr(nt, "__version__", "0.6.5"),
                      "devices": [str(d) for d in jax.devices()]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
