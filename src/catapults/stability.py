"""The public stability API: the critical learning rate of the optimizer actually used
(GD, heavy-ball momentum, Nesterov, Adam with its preconditioner), in one place.

``catapults.stability.critical_lr(model, X, optimizer)`` reads the optimizer's hyperparameters
and state; with ``optimizer=None`` (or plain SGD) it equals :func:`catapults.ntk.critical_lr`.
The formulas are in :mod:`catapults.curvature.stability` and docs/conventions.md; the true
loss Hessian (matrix-free top eigenpairs), Adam's preconditioned sharpness and SGD's batch
sharpness in :mod:`catapults.curvature.hessian`.
"""

from catapults.curvature.hessian import (
    BatchSharpness,
    batch_sharpness,
    hessian_power_step,
    hessian_top_eigenpairs,
    hvp_operator,
    preconditioned_sharpness,
)
from catapults.curvature.stability import (
    adam_inverse_preconditioner,
    adam_started,
    critical_lr,
    optimizer_edge,
    preconditioned_kernel,
)

__all__ = ["BatchSharpness", "adam_inverse_preconditioner", "adam_started", "batch_sharpness",
           "critical_lr", "hessian_power_step", "hessian_top_eigenpairs", "hvp_operator",
           "optimizer_edge", "preconditioned_kernel", "preconditioned_sharpness"]
