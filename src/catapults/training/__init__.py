"""Training: the trainer loop (:mod:`~catapults.training.loop`), its callback interface
(:mod:`~catapults.training.callbacks`), losses, schedules and optimisers, and the learning-rate
controllers that use the critical rate (:mod:`~catapults.training.controllers`: catapults on
demand and a guard against them, for any loop).

``config`` arguments here are :mod:`catapults.config` sections or any objects with the same
attributes: this layer does not import the config schema.
"""

from catapults.training.callbacks import Callback, StepContext, TrainState
from catapults.training.controllers import CatapultOnDemand, CriticalGuard
from catapults.training.loop import Trainer, TrainResult
from catapults.training.losses import (
    cross_entropy_loss,
    error_rate,
    evaluate,
    get_loss,
    mse_loss,
)
from catapults.training.optim import make_optimizer, resolve_device
from catapults.training.schedules import make_schedule

__all__ = ["Callback", "CatapultOnDemand", "CriticalGuard", "StepContext", "TrainResult",
           "TrainState", "Trainer", "cross_entropy_loss", "error_rate", "evaluate", "get_loss",
           "make_optimizer", "make_schedule", "mse_loss", "resolve_device"]
