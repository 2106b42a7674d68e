"""Reading loss series: Python, numpy and torch numbers all become Python floats."""

from __future__ import annotations

import decimal
import math
import numbers
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np


# ---- reading numbers: Python, numpy and torch all give Python floats ---------------------------
# numpy and torch are looked up, not imported: an array or a tensor exists only if its library was
# imported, and importing this module stays cheap.
def _is_tensor(v: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(v, torch.Tensor)


def _is_ndarray(v: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(v, np.ndarray)


def _is_bool(v: Any) -> bool:
    np = sys.modules.get("numpy")
    return isinstance(v, bool) or (np is not None and isinstance(v, np.bool_))


def _scalar(v: Any) -> float:
    """One loss as a Python float: ``None`` -> NaN; a real number (Python, numpy, ``Decimal``, a
    0-d numpy array or a 0-d torch tensor on any device) -> its value (beyond the float range:
    +-inf). TypeError for a bool or a non-number, ValueError for an array or a sequence (the
    message reads after the element's name)."""
    if v is None:
        return math.nan
    if _is_tensor(v) or _is_ndarray(v):
        if v.ndim:
            raise ValueError(f"has shape {tuple(v.shape)}")
        v = v.item() if _is_tensor(v) else v[()]  # a Python number / a numpy scalar
    if _is_bool(v):
        raise TypeError(f"is a bool ({v!r}), not a loss")
    if isinstance(v, (numbers.Real, decimal.Decimal)):
        try:
            return float(v)
        except OverflowError:  # an integer or fraction beyond the float range
            return math.inf if v > 0 else -math.inf
    if isinstance(v, (list, tuple)):
        raise ValueError(f"is a {type(v).__name__}")
    raise TypeError(f"is not a real number: {v!r} ({type(v).__name__})")


def _as_losses(losses: Any) -> list[float]:
    """``losses`` (see :func:`find_catapults`) as a list of Python floats, NaN for ``None``."""
    if isinstance(losses, (str, bytes)):
        raise TypeError("losses must be a sequence of numbers, got a string")
    if _is_tensor(losses) or _is_ndarray(losses):
        if losses.ndim != 1:
            raise ValueError(f"losses must be one-dimensional, got shape {tuple(losses.shape)}")
        if _is_tensor(losses):  # Python numbers; bool and complex dtypes are rejected below
            losses = losses.detach().cpu().tolist()
        elif losses.dtype.kind in "iuf":
            losses = losses.tolist()
        # other numpy dtypes go element by element: bools, strings, dates are rejected by type
    elif not isinstance(losses, Iterable):
        raise TypeError(f"losses must be a sequence of numbers, got {type(losses).__name__}")
    out = []
    for i, v in enumerate(losses):
        try:
            out.append(_scalar(v))
        except TypeError as err:
            raise TypeError(f"losses[{i}] {err}") from None
        except ValueError as err:
            raise ValueError(f"losses must be one-dimensional, but losses[{i}] {err}") from None
    return out


def _as_array(losses: Any) -> Any:
    """``losses`` as a float64 numpy array, the values :func:`_as_losses` gives; real numpy
    arrays, tensors and lists of Python floats go straight through (a 100k-step curve in
    milliseconds), everything else element by element."""

    if _is_ndarray(losses) and losses.ndim == 1 and losses.dtype.kind in "iuf":
        return losses.astype(np.float64)
    if _is_tensor(losses) and losses.ndim == 1 and (losses.dtype.is_floating_point or str(
            losses.dtype) in ("torch.int8", "torch.uint8", "torch.int16", "torch.int32",
                              "torch.int64")):
        torch = sys.modules["torch"]
        return losses.detach().to("cpu", torch.float64).numpy()
    if type(losses) in (list, tuple) and all(type(v) in (float, np.float64) for v in losses):
        return np.array(losses, dtype=np.float64)
    return np.asarray(_as_losses(losses), dtype=np.float64)


def _plain(v: Any) -> Any:
    """numpy / torch numbers and arrays as Python numbers and lists (tensors moved to the CPU),
    inside lists and tuples too; anything else unchanged."""
    if v is None or type(v) in (int, float, str):
        return v
    if _is_tensor(v):
        return v.detach().cpu().tolist()
    np = sys.modules.get("numpy")
    if np is not None and isinstance(v, (np.ndarray, np.generic)):
        return v.tolist()
    if type(v) in (list, tuple):
        return type(v)(_plain(x) for x in v)
    return v


def _finite(v: Any) -> bool:
    """True for a finite real number (Python, numpy or 0-d torch); False for anything else."""
    try:
        return math.isfinite(_scalar(v))
    except (TypeError, ValueError):
        return False
