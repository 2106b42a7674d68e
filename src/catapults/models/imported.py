"""``arch: import``: any ``nn.Module`` from a factory named ``"package.module:function"``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from catapults.errors import ConfigError


def import_factory(path: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:attribute"`` (the attribute may be dotted,
    ``"pkg.mod:Class.create"``). Raises :class:`ConfigError` naming ``model.factory``."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ConfigError(f"model.factory: {str(path)[:80]!r} is not of the form "
                          "'package.module:function'")
    module_name, attr = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module raised while importing
        raise ConfigError(f"model.factory: cannot import module {module_name!r} of {path!r}: "
                          f"{type(err).__name__}: {err}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"model.factory: module {module_name!r} has no attribute "
                              f"{attr!r} ({path!r})") from None
    if not callable(obj):
        raise ConfigError(f"model.factory: {path!r} is a {type(obj).__name__}, not callable")
    return obj


def build_imported(factory: str, kwargs: Mapping[str, Any] | None, *, seed: int,
                   dtype: torch.dtype) -> nn.Module:
    """``factory(**kwargs)`` called under ``torch.manual_seed(seed)`` (the global generator is
    restored afterwards), cast to ``dtype``. Anything it raises, or a result that is not an
    ``nn.Module``, is a :class:`ConfigError` naming ``model.factory``."""
    fn = import_factory(factory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = fn(**dict(kwargs or {}))
        except Exception as err:
            raise ConfigError(f"model.factory: {factory}(**model.kwargs) raised "
                              f"{type(err).__name__}: {str(err)[:200]}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory: {factory} returned a {type(model).__name__}, not a "
                          "torch.nn.Module")
    return model.to(dtype=dtype)


def check_outputs(model: nn.Module, X: Tensor, out_dim: int) -> None:
    """An imported model must map inputs ``X`` (a couple of training samples) to outputs of shape
    ``(len(X), out_dim)``, in eval mode; else :class:`ConfigError` naming ``model.factory``."""
    try:
        with torch.no_grad():
            out = model.eval()(X)
    except Exception as err:
        raise ConfigError(f"model.factory: the model fails on inputs of shape {tuple(X.shape)}: "
                          f"{type(err).__name__}: {str(err)[:200]}") from None
    want = (X.shape[0], out_dim)
    if not isinstance(out, Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"model.factory: the model maps inputs of shape {tuple(X.shape)} to "
                          f"{got}, expected {want} (samples x outputs)")
