"""Models, each built from a plain *spec* (a dict) that a run records, so a checkpoint rebuilds the
same architecture without guessing it from state-dict keys.

A spec is ``{"arch": NAME, "in_dim": d, "out_dim": c, "seed": s, "dtype": "float32", ...}`` plus
the architecture's own keyword arguments (image architectures also ``"in_shape": [C, H, W]``;
``arch: import`` has ``"factory"`` and ``"kwargs"``); :data:`ARCHITECTURES` maps each name to its
builder.

- :mod:`~catapults.models.layers`    :class:`ScaledLinear`, :class:`ScaledConv2d` (NTK / standard
  parameterisation), :func:`norm2d`
- :mod:`~catapults.models.mlp`       :class:`MLP`
- :mod:`~catapults.models.cnn`       :class:`CNN` (conv layers, global average pool, linear head)
- :mod:`~catapults.models.wrn`       :class:`WideResNet`
- :mod:`~catapults.models.vit`       :class:`ViT`
- :mod:`~catapults.models.imported`  ``arch: import``: any ``nn.Module`` from a factory path
- :mod:`~catapults.models.linearized` :class:`Linearized` (``"linearize": True`` in any spec: the
  network linearised at its initialisation, a frozen-kernel null)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from catapults.errors import ConfigError
from catapults.models.cnn import CNN
from catapults.models.imported import build_imported, check_outputs, import_factory
from catapults.models.layers import NORMS, ScaledConv2d, ScaledLinear, norm2d
from catapults.models.linearized import Linearized
from catapults.models.mlp import ACTIVATIONS, MLP
from catapults.models.vit import ViT
from catapults.models.wrn import WideResNet

__all__ = ["ACTIVATIONS", "ARCHITECTURES", "CNN", "IMAGE_ARCHITECTURES", "MAX_PARAMETER_BYTES",
           "MLP", "NORMS", "Linearized", "ScaledConv2d", "ScaledLinear", "ViT", "WideResNet",
           "build_model", "check_outputs", "count_parameters", "import_factory", "norm2d"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_PARAMETER_BYTES = 4 * 2**30
"""Largest model (its parameters alone, in the run's dtype) :func:`build_model` builds; counted
on the ``meta`` device first, so a mistyped width costs nothing."""
_SIZE_FIELDS = {"mlp": "model.width / model.depth", "cnn": "model.width / model.depth",
                "wrn": "model.widen_factor / model.depth",
                "vit": "model.width / model.depth / model.mlp_ratio"}


def _mlp(in_dim: int, out_dim: int, *, seed: int, dtype: torch.dtype, width: int = 1024,
         depth: int = 2, activation: str = "relu", bias: bool = False,
         parameterization: str = "ntk", bias_scale: float = 1.0) -> nn.Module:
    return MLP(in_dim, out_dim, width=width, depth=depth, activation=activation, bias=bias,
               parameterization=parameterization, bias_scale=bias_scale, seed=seed, dtype=dtype)


def _image(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    def build(in_dim: int, out_dim: int, *, seed: int, dtype: torch.dtype,
              in_shape: list[int], **kwargs: Any) -> nn.Module:
        return cls(in_shape, out_dim, seed=seed, dtype=dtype, **kwargs)

    build.__name__ = f"_{cls.__name__.lower()}"
    return build


def _imported(in_dim: int, out_dim: int, *, seed: int, dtype: torch.dtype, factory: str,
              kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    return build_imported(factory, kwargs, seed=seed, dtype=dtype)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp, "cnn": _image(CNN), "wrn": _image(WideResNet), "vit": _image(ViT),
    "import": _imported}
"""Architecture name -> builder ``f(in_dim, out_dim, *, seed, dtype, **kwargs) -> nn.Module``."""
IMAGE_ARCHITECTURES = ("cnn", "wrn", "vit")
"""Architectures whose spec holds ``in_shape`` ``[C, H, W]``: they take ``(n, C, H, W)`` inputs."""


def count_parameters(spec: Mapping[str, Any]) -> int:
    """The number of parameters of the model ``spec`` describes, counted on the ``meta``
    device (no memory, no initialisation). Not for ``arch: import`` (its factory would run)."""
    arch, args, kwargs = _parse(spec)
    if arch == "import":
        raise ValueError("count_parameters: an imported model is only known once built")
    with torch.device("meta"):
        model = _call(arch, args, kwargs)
    return sum(p.numel() for p in model.parameters())


def _parse(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    spec = dict(spec)
    arch = spec.pop("arch", "mlp")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; one of "
                          f"{', '.join(sorted(ARCHITECTURES))}")
    dtype = spec.pop("dtype", "float32")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ConfigError(f"model: dtype {dtype!r}; one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    args = {"in_dim": spec.pop("in_dim", None), "out_dim": spec.pop("out_dim"),
            "seed": spec.pop("seed", 0), "dtype": dtype}
    if arch in IMAGE_ARCHITECTURES:
        shape = spec.get("in_shape")
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            raise ConfigError(
                f"model.arch: {arch!r} needs image inputs (n, C, H, W), got inputs of shape "
                f"(n, {', '.join(map(str, shape)) if shape else args['in_dim']}); use arch "
                "'mlp' or an image data set")
        patch = spec.get("patch_size")
        if arch == "vit" and patch is not None and (shape[1] % patch or shape[2] % patch):
            raise ConfigError(f"model.patch_size: {patch} does not divide the image size "
                              f"{shape[1]}x{shape[2]}")
    return arch, args, spec


def _call(arch: str, args: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    try:
        return ARCHITECTURES[arch](args["in_dim"], args["out_dim"], seed=args["seed"],
                                   dtype=args["dtype"], **kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model: {arch}: {err}") from None


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """The model described by ``spec`` (see the module docstring). Raises :class:`ConfigError`
    naming the field for an unknown architecture or argument, image architectures without image
    inputs, a model over :data:`MAX_PARAMETER_BYTES`, or a bad ``model.factory``. With
    ``"linearize": True`` the model is wrapped in :class:`Linearized`."""
    spec = dict(spec)
    if spec.pop("linearize", False):
        return Linearized(build_model(spec))
    arch, args, kwargs = _parse(spec)
    if arch != "import":
        with torch.device("meta"):
            count = sum(p.numel() for p in _call(arch, args, kwargs).parameters())
        size = count * args["dtype"].itemsize
        if size > MAX_PARAMETER_BYTES:
            raise ConfigError(
                f"{_SIZE_FIELDS[arch]}: the {arch} would have {count:,} parameters "
                f"({size / 2**30:,.1f} GiB), more than the {MAX_PARAMETER_BYTES / 2**30:.0f} "
                "GiB a model may take; make it smaller")
    return _call(arch, args, kwargs)
