"""Every public curvature function runs in full float32 precision (TF32 off for CUDA convolutions
and matrix products: on an H200 a TF32 convolution put 8e-4 of relative error into the CNN's
kernel) and gives the caller's settings back. The flags are plain settings, so this runs on the
CPU: a model records them at each forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from catapults.curvature import agop as agop_mod
from catapults.curvature import hessian, ntk, spectrum, stability
from catapults.curvature.precision import full_float32

CUDNN, MATMUL = torch.backends.cudnn, torch.backends.cuda.matmul


@pytest.fixture
def tf32_on():
    """The legacy flags on (as PyTorch's cuDNN default, and a program that enabled TF32 for
    products); restored afterwards."""
    saved = CUDNN.allow_tf32, MATMUL.allow_tf32
    CUDNN.allow_tf32, MATMUL.allow_tf32 = True, True
    yield
    CUDNN.allow_tf32, MATMUL.allow_tf32 = saved


class Recorder(nn.Module):
    """A small MLP that records the TF32 flags at each forward pass."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((CUDNN.allow_tf32, MATMUL.allow_tf32))
        return self.net(x)


def _calls(model, X, y):
    opt = torch.optim.Adam(model.parameters())
    nn.functional.mse_loss(model(X), y).backward()
    opt.step()
    mv = ntk.ntk_matvec(model, X, product="autograd")
    hv, p = hessian.hvp_operator(model, X, y)
    return {
        "empirical_ntk": lambda: ntk.empirical_ntk(model, X),
        "ntk_matvec products": lambda: mv(torch.ones(X.shape[0] * 2)),
        "top_eigenpairs": lambda: spectrum.top_eigenpairs(model, X, 2, method="lanczos"),
        "critical_lr": lambda: spectrum.critical_lr(model, X),
        "loss_split": lambda: spectrum.loss_split(model, X, y, 1),
        "ntk_summary": lambda: spectrum.ntk_summary(model, X, y, 2),
        "agop": lambda: agop_mod.agop(model, X),
        "input_gradients": lambda: agop_mod.input_gradients(model, X),
        "hvp products": lambda: hv(torch.ones(p)),
        "hessian_top_eigenpairs": lambda: hessian.hessian_top_eigenpairs(model, X, y, 1),
        "batch_sharpness": lambda: hessian.batch_sharpness(model, X, y, 4, max_batches=25),
        "preconditioned_sharpness": lambda: hessian.preconditioned_sharpness(model, X, y, opt),
        "preconditioned_kernel": lambda: stability.preconditioned_kernel(model, X, opt),
        "stability.critical_lr": lambda: stability.critical_lr(model, X, optimizer=opt),
    }


def test_every_curvature_function_runs_without_tf32_and_restores_the_flags(tf32_on):
    torch.manual_seed(0)
    model, X, y = Recorder(), torch.randn(8, 4), torch.randn(8, 2)
    for name, call in _calls(model, X, y).items():
        model.seen.clear()
        call()
        assert model.seen and set(model.seen) == {(False, False)}, name
        assert (CUDNN.allow_tf32, MATMUL.allow_tf32) == (True, True), name


def test_flags_come_back_when_the_body_raises(tf32_on):
    with pytest.raises(ValueError), full_float32():
        assert not CUDNN.allow_tf32 and not MATMUL.allow_tf32
        raise ValueError
    assert CUDNN.allow_tf32 and MATMUL.allow_tf32


def test_nested_and_untouched_when_already_full_precision():
    saved = CUDNN.allow_tf32, MATMUL.allow_tf32
    try:
        CUDNN.allow_tf32, MATMUL.allow_tf32 = False, False
        with full_float32(), full_float32():
            assert (CUDNN.allow_tf32, MATMUL.allow_tf32) == (False, False)
        assert (CUDNN.allow_tf32, MATMUL.allow_tf32) == (False, False)
    finally:
        CUDNN.allow_tf32, MATMUL.allow_tf32 = saved


def test_a_program_on_the_newer_api_keeps_it():
    """A program that set the ``fp32_precision`` strings (PyTorch then refuses to read the
    legacy booleans): the strings are used, and given back unchanged."""
    if not hasattr(MATMUL, "fp32_precision"):
        pytest.skip("this PyTorch has no fp32_precision settings")
    saved = MATMUL.fp32_precision, CUDNN.conv.fp32_precision
    try:
        MATMUL.fp32_precision, CUDNN.conv.fp32_precision = "tf32", "tf32"
        with full_float32():
            inside = MATMUL.fp32_precision, CUDNN.conv.fp32_precision
        assert inside == ("ieee", "ieee")
        assert (MATMUL.fp32_precision, CUDNN.conv.fp32_precision) == ("tf32", "tf32")
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        ntk.empirical_ntk(model, torch.randn(5, 3))
        assert (MATMUL.fp32_precision, CUDNN.conv.fp32_precision) == ("tf32", "tf32")
    finally:
        MATMUL.fp32_precision, CUDNN.conv.fp32_precision = saved
    assert isinstance(MATMUL.allow_tf32, bool)  # the rest of the suite can read them again
    assert isinstance(CUDNN.allow_tf32, bool)
