"""Full float32 precision for the curvature quantities on CUDA.

PyTorch runs float32 convolutions on NVIDIA GPUs in TF32 by default
(``torch.backends.cudnn.allow_tf32 = True``: a 10-bit mantissa for the products), and float32
matrix products in TF32 when a program sets ``torch.backends.cuda.matmul.allow_tf32`` or
``torch.set_float32_matmul_precision("high")``. The toolkit's kernels, eigenvalues, critical
rates and AGOPs are exact up to float32 rounding: measured on an H200 (PyTorch 2.11,
benchmarks/bench_cuda.py), the issue's CNN's kernel came out with a relative error of 8.3e-4
against float64 with TF32 convolutions and 1.3e-7 without. So every public curvature function
runs under :func:`full_float32`: TF32 off for convolutions and matrix products inside (and
the bf16 products oneDNN may use on a CPU under ``set_float32_matmul_precision("medium")``), the
caller's settings restored on the way out (a training loop that chose TF32 keeps it for its own
steps). The settings are global: two threads computing at once share them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


_NEW_API = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv",
            "mkldnn.rnn")
"""The backends whose ``fp32_precision`` string :func:`full_float32` sets to ``"ieee"`` (those
this PyTorch has)."""


def _backend(path: str):
    obj = torch.backends
    for name in path.split("."):
        obj = getattr(obj, name, None)
    return obj


@contextmanager
def full_float32() -> Iterator[None]:
    """Full float32 precision for matrix products and convolutions inside (TF32 on CUDA, and
    bf16 that ``torch.set_float32_matmul_precision("medium")`` allows oneDNN on the CPU, off);
    the previous settings back afterwards (also when the body raises). Nests. Usable as a
    decorator.

    Through the per-backend ``fp32_precision`` strings where this PyTorch has them (since 2.9):
    set to ``"ieee"``, each put back only if it was changed, so every setting the caller could
    read before reads the same after (the legacy ``allow_tf32`` flags are not touched: writing
    them beside the strings makes PyTorch refuse to read ``get_float32_matmul_precision()``,
    and they do not override a backend's own string). On an older PyTorch, the legacy
    ``allow_tf32`` flags."""
    if getattr(_backend("cuda.matmul"), "fp32_precision", None) is not None:
        objs = [o for o in map(_backend, _NEW_API) if hasattr(o, "fp32_precision")]
        flags = [(o, "fp32_precision", "ieee") for o in objs]
    else:  # pragma: no cover - PyTorch before 2.9
        flags = [(torch.backends.cudnn, "allow_tf32", False),
                 (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(obj, name) for obj, name, _ in flags]
    try:
        for (obj, name, value), old in zip(flags, saved):
            if old != value:  # untouched when already full precision
                setattr(obj, name, value)
        yield
    finally:
        for (obj, name, value), old in zip(flags, saved):
            if old != value:
                setattr(obj, name, old)


def exact_products(fn: F) -> F:
    """Wrap a function that returns a product closure (``V ↦ K V``, ``V ↦ H V``) so that the
    closure too runs under :func:`full_float32` each time it is called."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        with full_float32():
            got = fn(*args, **kwargs)
        if isinstance(got, tuple):
            return (_exact(got[0]), *got[1:])
        return _exact(got)

    return wrapper  # type: ignore[return-value]


def _exact(mv: Callable) -> Callable:
    @wraps(mv)
    def inner(*args, **kwargs):
        with full_float32():
            return mv(*args, **kwargs)

    return inner
