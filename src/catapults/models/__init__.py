"""Models, each built from a plain *spec* (a dict) that a run records, so a checkpoint rebuilds the
same architecture without guessing it from state-dict keys.

A spec is ``{"arch": NAME, "in_dim": d, "out_dim": c, "seed": s, "dtype": "float32", ...}`` plus
the architecture's own keyword arguments; :data:`ARCHITECTURES` maps each name to its builder.

- :mod:`~catapults.models.layers`  :class:`ScaledLinear` (NTK / standard parameterisation)
- :mod:`~catapults.models.mlp`     :class:`MLP`
- :mod:`~catapults.models.linearized` :class:`Linearized` (``"linearize": True`` in a spec: the
  network linearised at its initialisation, a frozen-kernel null)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from catapults.errors import ConfigError
from catapults.models.layers import ScaledLinear
from catapults.models.linearized import Linearized
from catapults.models.mlp import ACTIVATIONS, MLP

__all__ = ["ACTIVATIONS", "ARCHITECTURES", "MLP", "Linearized", "ScaledLinear", "build_model"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _mlp(in_dim: int, out_dim: int, *, seed: int, dtype: torch.dtype, width: int = 1024,
         depth: int = 2, activation: str = "relu", bias: bool = False,
         parameterization: str = "ntk", bias_scale: float = 1.0) -> nn.Module:
    return MLP(in_dim, out_dim, width=width, depth=depth, activation=activation, bias=bias,
               parameterization=parameterization, bias_scale=bias_scale, seed=seed, dtype=dtype)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": _mlp}
"""Architecture name -> builder ``f(in_dim, out_dim, *, seed, dtype, **kwargs) -> nn.Module``."""


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """The model described by ``spec`` (see the module docstring). Raises :class:`ConfigError`
    naming the field for an unknown architecture or argument."""
    spec = dict(spec)
    arch = spec.pop("arch", "mlp")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; one of "
                          f"{', '.join(sorted(ARCHITECTURES))}")
    dtype = spec.pop("dtype", "float32")
    dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    in_dim, out_dim = spec.pop("in_dim"), spec.pop("out_dim")
    seed = spec.pop("seed", 0)
    linearize = spec.pop("linearize", False)
    try:
        model = ARCHITECTURES[arch](in_dim, out_dim, seed=seed, dtype=dtype, **spec)
    except TypeError as err:
        raise ConfigError(f"model: {arch}: {err}") from None
    return Linearized(model) if linearize else model
