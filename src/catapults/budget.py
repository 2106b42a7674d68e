"""Memory a run will need, estimated from its config before anything is allocated.

:func:`estimate` adds up the large objects a config implies: the decoded data, the model's
parameters with their gradients and optimizer state (and, with checkpoints, a serialised copy),
the activations of a forward and backward pass over a training batch, the NTK monitor's kernel
``(n·c)²`` on its probe (and the batch kernels), the kernel of the ``critical`` schedule, the
AGOP monitor's ``d × d`` matrices and the per-sample input Jacobians it collects.
:func:`check` compares the total with a budget and raises one :class:`ConfigError` that gives the
estimate, the budget and the config field that sets the largest part.

The budget (:func:`memory_budget`) is 80% of the memory available now (``MemAvailable`` in
``/proc/meminfo``, a cgroup limit if lower, else ``os.sysconf``), and for a run on a CUDA
device also 80% of that device's free memory (:func:`device_budget`); the environment variable
``CATAPULTS_MEMORY_BUDGET`` overrides it (``64GiB``, ``512MiB``, ``2e9`` bytes, or ``off``).
The figures are estimates, within a small factor: they catch a config that asks for terabytes,
not one that needs 10% more than there is.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catapults.errors import ConfigError

ENV_VAR = "CATAPULTS_MEMORY_BUDGET"
FRACTION = 0.8
"""The share of the available memory a run may plan to use."""

IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32), "svhn": (3, 32, 32), "celeba": (3, 218, 178)}
"""The native (channels, height, width) of each real data set, before grayscale / resize."""
N_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "svhn": 10,
             "celeba": 2}
DENSE_ROWS = 6000  # monitor.ntk.method 'auto' forms the kernel densely up to this many rows
CRITICAL_POINTS = 2048  # the 'critical' schedule measures the kernel on this many points
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}


def gib(n: float) -> str:
    """Bytes as ``'1.5 GiB'`` (MiB below 1 GiB)."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


@dataclass(frozen=True)
class Part:
    """One large object: what it is, its bytes, and the config field that sets its size."""

    what: str
    bytes: float
    field: str
    value: Any


@dataclass(frozen=True)
class Budget:
    bytes: float
    source: str


def parse_size(text: str) -> float | None:
    """Bytes from ``'64GiB'``, ``'512 MB'``, ``'2e9'``; None for ``off``/``none``/``inf``.
    :class:`ConfigError` naming the environment variable otherwise."""
    s = text.strip().lower()
    if s in ("off", "none", "inf", "unlimited"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)", s)
    size = float(m.group(1)) * _UNITS[m.group(2)] if m and m.group(2) in _UNITS else math.nan
    if not 0 < size < math.inf:
        raise ConfigError(f"{ENV_VAR}: {text[:40]!r} is not a memory size (e.g. 16GiB, 512MiB, "
                          "2e9 bytes, or off)")
    return size


def available_memory() -> tuple[float, str] | None:
    """(bytes of memory available now, where the figure comes from), or None if unknown."""
    found: list[tuple[float, str]] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "/proc/meminfo (MemAvailable)"))
                break
    except (OSError, ValueError, IndexError):
        pass
    try:  # a container's cgroup v2 limit, when lower than the machine's free memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append((max(int(limit) - used, 0), "the cgroup limit (memory.max)"))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            found.append((float(pages), "os.sysconf"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def memory_budget() -> Budget | None:
    """The budget a run's estimate is checked against, or None for no check."""
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        size = parse_size(env)
        return None if size is None else Budget(size, f"{ENV_VAR}={env.strip()}")
    avail = available_memory()
    if avail is None:
        return None
    return Budget(FRACTION * avail[0], f"{FRACTION:.0%} of the {gib(avail[0])} available, "
                  f"per {avail[1]}; set {ENV_VAR} to change it")


def device_budget(device: Any) -> Budget | None:
    """The budget on a CUDA ``device`` (a ``torch.device``): 80% of its free memory
    (``torch.cuda.mem_get_info``), unless ``CATAPULTS_MEMORY_BUDGET`` is set (then that); None
    for other devices or when the figure is unknown."""
    if getattr(device, "type", None) != "cuda":
        return None
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        return memory_budget()
    import torch

    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError, ValueError):
        return None
    return Budget(FRACTION * free, f"{FRACTION:.0%} of the {gib(free)} free on {device}; set "
                  f"{ENV_VAR} to change it")


def _image(data: Any) -> tuple[int, int, int]:
    """(channels, height, width) of an image data set's inputs; synthetic data: (1, 1, d)."""
    if data.name == "synthetic":
        return 1, 1, data.d
    ch, h, w = IMAGE_SHAPES[data.name]
    if data.grayscale:
        ch = 1
    if data.image_size is not None:
        h = w = data.image_size
    return ch, h, w


def _shape(data: Any) -> tuple[int, int, str, Any]:
    """(input dimension d, number of outputs c, the field that sets d, its value)."""
    if data.name == "synthetic":
        return data.d, 1, "data.d", data.d
    ch, h, w = _image(data)
    field, value = ("data.image_size", data.image_size) if data.image_size is not None else (
        "data.name", repr(data.name))
    k = len(data.classes) if data.classes is not None else N_CLASSES[data.name]
    c = 1 if data.name == "celeba" or (data.encoding != "onehot" and k == 2) else k
    return ch * h * w, c, field, value


def _arch_sizes(model: Any, data: Any, d: int, c: int) -> tuple[int, int, int]:
    """(parameters, activations per sample, layers) of ``model`` (a config section) on inputs
    of ``d`` values and ``c`` outputs: exact for the MLP, an upper-leaning count for the image
    architectures (every conv or token map kept once forward and once backward), (0, 0, 0) for
    ``arch: import`` (only known once built; not checked)."""
    arch = getattr(model, "arch", "mlp")
    if arch == "mlp":
        dims = [d] + [model.width] * (model.depth - 1) + [c]
        p = sum(a * b + (b if model.bias else 0) for a, b in zip(dims[:-1], dims[1:]))
        return p, model.width * (model.depth - 1), model.depth
    ch, h, w = _image(data)
    if arch == "cnn":
        k2, width = model.kernel_size ** 2, model.width
        p = k2 * ch * width + (model.depth - 1) * k2 * width * width + width * c
        return p, 2 * model.depth * width * h * w, model.depth + 1
    if arch == "wrn":
        blocks, k = (model.depth - 4) // 6, model.widen_factor
        widths = [16 * k, 32 * k, 64 * k]
        p = 9 * ch * 16 + sum(9 * 2 * blocks * wd * wd + 9 * wd * wd // 2 for wd in widths)
        act = sum(2 * blocks * 3 * wd * h * w // 4 ** g for g, wd in enumerate(widths))
        return p + widths[-1] * c, act + 16 * h * w, model.depth
    if arch == "vit":
        width, tokens = model.width, (h // model.patch_size) * (w // model.patch_size) + 1
        ratio = model.mlp_ratio
        per_block = (4 + 2 * ratio) * width * width
        p = model.depth * per_block + (ch * model.patch_size ** 2 + tokens + c) * width
        act = model.depth * tokens * ((8 + 2 * ratio) * width + 2 * model.heads * tokens)
        return int(p), int(act), model.depth
    return 0, 0, 0


def estimate(config: Any) -> list[Part]:
    """The large objects ``config`` (a :class:`catapults.config.RunConfig`) implies, in bytes."""
    data, model, train, mon, out = (config.data, config.model, config.train, config.monitor,
                                    config.output)
    s = 8 if train.dtype == "float64" else 4
    n, n_test = data.n_train, data.n_test
    d, c, d_field, d_value = _shape(data)
    c = model.out_dim or c
    parts: list[Part] = []
    count_field = ("data.n_train", n) if n >= n_test else ("data.n_test", n_test)
    # decoded data: float64 while sampled / standardised, then the training dtype (real data
    # are decoded as float32 first)
    per_value = 8 + s if data.name == "synthetic" else 4 + 8 + s
    data_field = (d_field, d_value) if d > n + n_test and d_field != "data.name" else count_field
    parts.append(Part(f"the data ({n + n_test:,} samples of dimension {d:,})",
                      (n + n_test) * (d * per_value + 16 * c), *data_field))
    # parameters, gradients and optimizer state (and a serialised copy for checkpoints)
    p, hidden, layers = _arch_sizes(model, data, d, c)
    if getattr(model, "linearize", False):  # theta and theta_0, and the JVP's tangents
        p, hidden = 2 * p, 2 * hidden
    size_field = ({"mlp": "model.width", "cnn": "model.width", "vit": "model.width",
                   "wrn": "model.widen_factor"}.get(getattr(model, "arch", "mlp"), "model.arch"))
    size_value = getattr(model, size_field.split(".")[1], None)
    slots = {"gd": 0, "sgd": 0, "momentum": 1, "adam": 2}[train.optimizer]
    slots += 1 if train.weight_decay > 0 and train.optimizer in ("gd", "sgd") else 0
    copies = 2 + slots + (2 * (1 + slots) if out.checkpoint or out.checkpoint_every else 0)
    parts.append(Part(f"the model's {p:,} parameters (with gradients, optimizer state and "
                      "checkpoint copies)", p * s * copies,
                      *((size_field, size_value) if (model.depth or 0) > 1
                        or getattr(model, "arch", "mlp") != "mlp" else (d_field, d_value))))
    # activations of a training step (forward and backward) and of a full evaluation pass
    full = train.optimizer == "gd" or train.batch_size is None
    b = n if full else min(train.batch_size, n)
    step = Part(f"the activations of a forward and backward pass over {b:,} samples",
                3 * b * (d + hidden + c) * s,
                *(("data.n_train", n) if full else ("train.batch_size", b)))
    evaluation = Part(f"the activations of an evaluation pass over {max(n, n_test):,} samples",
                      2 * max(n, n_test) * (d + hidden + c) * s, *count_field)
    parts.append(max(step, evaluation, key=lambda part: part.bytes))  # one at a time
    if mon.ntk.enabled:
        m = min(mon.ntk.probe_size or (n if full else min(n, 512)), n)
        N = m * c
        dense = mon.ntk.method == "dense" or (mon.ntk.method == "auto" and N <= DENSE_ROWS)
        # dense: K in the dtype, its float64 copy and eigenvectors; per-layer Jacobian factors
        need = (N * N * (s + 16) if dense else N * (mon.ntk.k + 40) * 8) \
            + m * (d + hidden + c * (layers + 1)) * s * 2
        field = ("monitor.ntk.probe_size",
                 m if mon.ntk.probe_size else f"unset (the probe is {m:,} training samples)")
        parts.append(Part(f"the NTK monitor's kernel on {m:,} probe points (({N:,})² "
                          f"{'dense' if dense else 'matrix-free'})", need, *field))
        if mon.ntk.batch and not full:
            parts.append(Part(f"the NTK monitor's batch kernels (({b * c:,})²)",
                              (b * c) ** 2 * (s + 16) + b * (d + hidden) * s * 2,
                              "train.batch_size", b))
    if mon.sharpness.enabled:
        parts.append(_sharpness_part(mon.sharpness, n, c, p, d + hidden + c, s))
    if train.schedule.kind == "critical":
        m = min(n, CRITICAL_POINTS)
        parts.append(Part(f"the critical schedule's kernel on {m:,} points",
                          (m * c) ** 2 * (s + 16) + m * (d + hidden) * s * 2,
                          "train.schedule.kind", "critical"))
    if mon.agop.enabled:
        parts.append(Part(f"the AGOP monitor's {d:,} x {d:,} matrices", 4 * 8 * d * d,
                          d_field, d_value))
        k = min(mon.agop.n_samples or n, n)
        field = ("monitor.agop.n_samples",
                 k if mon.agop.n_samples else f"unset (all {k:,} training samples)")
        parts.append(Part(f"the AGOP monitor's per-sample input Jacobians ({k:,} x {c} x {d:,})",
                          2 * k * c * d * s, *field))
    return parts


KRYLOV_VECTORS = 120
"""Vectors of the size of θ (float64) a Hessian eigen-solve holds: its block Krylov basis (13
blocks of 4), the block products and workspace (catapults.linalg.eigen)."""


def _sharpness_part(cfg: Any, n: int, c: int, p: int, width: int, s: int) -> Part:
    """The sharpness monitor: the Hessian eigen-solve's basis, the activations of a
    Hessian-vector product over a block of 4 vectors on the probe (forward, backward and the
    forward-over-reverse tangents), and the dense Gauss-Newton kernel on the probe."""
    m = min(cfg.probe_size or min(n, 256), n)
    need = (KRYLOV_VECTORS * p * 8 + 4 * 3 * m * width * s
            + ((m * c) ** 2 * (s + 16) if cfg.gauss_newton else 0))
    field = ("monitor.sharpness.probe_size",
             m if cfg.probe_size else f"unset (the probe is {m:,} training samples)")
    return Part(f"the sharpness monitor's Hessian solve and Gauss-Newton kernel on {m:,} probe "
                "points", need, *field)


def check(config: Any, budget: Budget | None = None) -> None:
    """Raise :class:`ConfigError` if the memory ``config`` implies (:func:`estimate`) exceeds
    ``budget`` (default :func:`memory_budget`). The message gives the estimate, the budget and
    the field that sets the largest part. Allocates nothing."""
    budget = memory_budget() if budget is None else budget
    if budget is None:
        return
    parts = estimate(config)
    total = math.fsum(part.bytes for part in parts)
    if total <= budget.bytes:
        return
    big = max(parts, key=lambda part: part.bytes)
    raise ConfigError(
        f"{big.field}: {big.value} asks for too much memory: {big.what} would need "
        f"{gib(big.bytes)}, the run about {gib(total)} in all, more than the memory budget of "
        f"{gib(budget.bytes)} ({budget.source}); use a smaller {big.field}")
