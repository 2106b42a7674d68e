"""Factories that configs name with ``model.arch: import`` in tests/test_models.py
(``model.factory: "model_factories:..."``; the tests directory is on sys.path)."""

import torch
from torch import nn

NOT_CALLABLE = 3


def tiny_cnn(channels: int = 1, out_dim: int = 1, width: int = 4) -> nn.Module:
    """A user's own small CNN (PyTorch's default initialisation)."""
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, out_dim))


def not_a_module():
    return {"weight": torch.zeros(3)}


def raises(**kwargs):
    raise RuntimeError("this factory always fails")


def wrong_outputs():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
