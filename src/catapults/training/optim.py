"""Optimisers and devices from their names."""

from __future__ import annotations

from typing import Any

import torch

from catapults.errors import ConfigError


def make_optimizer(params, cfg: Any) -> torch.optim.Optimizer:
    """torch optimiser for ``cfg.optimizer`` ('gd' and 'sgd' are plain SGD; the batch differs)."""
    if cfg.optimizer in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                            weight_decay=cfg.weight_decay)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)
