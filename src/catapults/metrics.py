"""The names of the metrics in a run's rows (``metrics.jsonl``, loggers, TensorBoard tags), defined
once. A row describes θ_t before update t (docs/conventions.md#metrics-rows).

Trainer keys: :data:`STEP`, :data:`EPOCH`, :data:`LR`, :data:`LOSS` (the loss of update t's
batch), :data:`TRAIN_LOSS` (the full training loss), :data:`TEST_LOSS`, :data:`TEST_ERROR`.
Monitor keys are listed in :data:`MEASUREMENTS`: a row that holds one of them is always written,
whatever ``log_every`` says. A monitor that adds a new key registers it with :func:`register`.
"""

from __future__ import annotations

STEP = "step"
EPOCH = "epoch"
LR = "lr"
LOSS = "loss"
TRAIN_LOSS = "train_loss"
TEST_LOSS = "test_loss"
TEST_ERROR = "test_error"
DIVERGED_IN = "diverged_in"

NTK_LAMBDA = "ntk/lambda"            # λ_1..λ_k of the probe kernel, descending (a list)
NTK_ETA_CRIT = "ntk/eta_crit"        # n·c / λ_1
NTK_CRITICAL_LEVEL = "ntk/critical_level"  # n·c / η
NTK_S = "ntk/s"                      # size of the top eigenspace of the split
NTK_L = "ntk/L"                      # the probe loss
NTK_L_TOP = "ntk/L_top"
NTK_L_REST = "ntk/L_rest"
NTK_L_TOP_BY_S = "ntk/L_top_by_s"    # L_top for s = 1..k (a list)
NTK_BATCH_LAMBDA_MAX = "ntk/batch_lambda_max"
NTK_BATCH_ETA_CRIT = "ntk/batch_eta_crit"  # b·c / λ_max(K_B) of update t's batch
NTK_BATCH_EDGE = "ntk/batch_edge"  # the optimizer's own critical rate on the batch (momentum, Adam)
AGOP_ALIGNMENT = "agop/alignment"
SHARPNESS_HESSIAN = "sharpness/hessian"          # λ_max of the loss Hessian on the probe
SHARPNESS_HESSIAN_RESIDUAL = "sharpness/hessian_residual"  # |Hu - θu| / |θ| of that value
SHARPNESS_GN = "sharpness/gauss_newton"          # λ_max of its Gauss-Newton part, 2λ_max(K)/(n·c)
SHARPNESS_PRECONDITIONED = "sharpness/preconditioned"  # λ_max(P⁻¹H) for Adam
SHARPNESS_BATCH = "sharpness/batch"              # E_B[g_Bᵀ H_B g_B / |g_B|²]
SHARPNESS_THRESHOLD = "sharpness/threshold"      # the optimizer's edge for the sharpness above
# L_top with s = 1 in the top eigenvector of Adam's preconditioned kernel J P⁻¹ Jᵀ (reproduce
# stability; the probe of the NTK monitor's split, whose ntk/L is the total)
NTK_L_TOP_PRECONDITIONED = "ntk/L_top_preconditioned"
NTK_L_TOP_PRECONDITIONED_FIXED = "ntk/L_top_preconditioned_fixed"  # its eigenvector of one step

MEASUREMENTS: set[str] = {
    NTK_LAMBDA, NTK_ETA_CRIT, NTK_CRITICAL_LEVEL, NTK_S, NTK_L, NTK_L_TOP, NTK_L_REST,
    NTK_L_TOP_BY_S, NTK_BATCH_LAMBDA_MAX, NTK_BATCH_ETA_CRIT, NTK_BATCH_EDGE, AGOP_ALIGNMENT,
    SHARPNESS_HESSIAN, SHARPNESS_HESSIAN_RESIDUAL, SHARPNESS_GN, SHARPNESS_PRECONDITIONED,
    SHARPNESS_BATCH,
    SHARPNESS_THRESHOLD, NTK_L_TOP_PRECONDITIONED, NTK_L_TOP_PRECONDITIONED_FIXED,
}
"""Keys that monitors write; a row holding any of them is always logged."""

LIST_METRICS: set[str] = {NTK_LAMBDA, NTK_L_TOP_BY_S}
"""Keys whose value is a list; loggers of scalars write element ``i`` as ``KEY_{i+1}``."""


def register(key: str, *, is_list: bool = False) -> str:
    """Declare a monitor's metric ``key`` (so that rows holding it are always logged); returns
    ``key``."""
    MEASUREMENTS.add(key)
    if is_list:
        LIST_METRICS.add(key)
    return key


def has_measurement(row: dict) -> bool:
    """Whether ``row`` holds a monitor's measurement."""
    return any(key in MEASUREMENTS for key in row)
