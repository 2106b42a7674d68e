"""Full float32 precision for the curvature quantities on CUDA.

PyTorch runs float32 convolutions on NVIDIA GPUs in TF32 by default
(``torch.backends.cudnn.allow_tf32 = True``: a 10-bit mantissa for the products), and float32
matrix products in TF32 when a program sets ``torch.backends.cuda.matmul.allow_tf32`` or
``torch.set_float32_matmul_precision("high")``. The toolkit's kernels, eigenvalues, critical
rates and AGOPs are exact up to float32 rounding: measured on an H200 (PyTorch 2.11,
benchmarks/bench_cuda.py), the issue's CNN's kernel came out with a relative error of 8.3e-4
against float64 with TF32 convolutions and 1.3e-7 without. So every public curvature function
runs under :func:`full_float32`: TF32 off for convolutions and matrix products inside, the
caller's settings restored on the way out (a training loop that chose TF32 keeps it for its own
steps). On the CPU the flags change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


@contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for CUDA convolutions and matrix products inside; the previous settings back
    afterwards (also when the body raises). Nests. Usable as a decorator.

    Through the flags the caller's program uses: the legacy ``allow_tf32`` booleans, or, when
    PyTorch refuses to read them because the program set the newer ``fp32_precision``
    strings, those (PyTorch raises on reading a mix of the two)."""
    try:
        flags = [(torch.backends.cudnn, "allow_tf32", False),
                 (torch.backends.cuda.matmul, "allow_tf32", False)]
        saved = [getattr(obj, name) for obj, name, _ in flags]
    except RuntimeError:  # the program uses the newer API
        flags = [(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
                 (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
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
