"""The public NTK API in one place: kernels, eigenpairs, critical learning rates and the loss split.

``catapults.ntk`` gathers the names of :mod:`catapults.curvature.ntk` (the kernel),
:mod:`catapults.curvature.spectrum` (what it says) and the solvers of :mod:`catapults.linalg`, so
that ``from catapults.ntk import empirical_ntk, critical_lr`` works. Conventions:
docs/conventions.md (the full ``(n·c) × (n·c)`` kernel is the default everywhere).
"""

from catapults.curvature.checks import check_per_sample, on_model_device
from catapults.curvature.ntk import (
    LINEAR_RULES,
    METHODS,
    NTK_RULES,
    GradFactor,
    HadamardFactor,
    NTKRule,
    empirical_ntk,
    ntk_matvec,
    per_sample_jacobian,
    register_conv_rule,
    register_linear_rule,
    register_ntk_rule,
    unregister_ntk_rule,
)
from catapults.curvature.ntk_rules.attention import LocalVJPRule
from catapults.curvature.spectrum import (
    NTKSummary,
    critical_lr,
    critical_rate,
    lambda_max,
    loss_split,
    ntk_summary,
    split_from_eigvecs,
    top_eigenpairs,
)
from catapults.errors import KernelError, NTKError
from catapults.linalg.eigen import block_krylov_top, eig_top
from catapults.linalg.gram import gram

__all__ = [
    "LINEAR_RULES", "METHODS", "NTK_RULES", "GradFactor", "HadamardFactor", "LocalVJPRule",
    "NTKRule", "register_ntk_rule", "unregister_ntk_rule", "KernelError", "NTKError",
    "block_krylov_top", "check_per_sample",
    "NTKSummary", "critical_lr", "critical_rate", "eig_top", "empirical_ntk", "gram", "lambda_max",
    "loss_split", "ntk_matvec", "ntk_summary", "on_model_device", "per_sample_jacobian",
    "register_conv_rule", "register_linear_rule", "split_from_eigvecs", "top_eigenpairs",
]
