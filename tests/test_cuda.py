"""The curvature functions with the model on a CUDA device and the data on the CPU (a model that
was trained on the GPU, data loaded as usual): each moves the data beside the parameters and
returns what the same float64 model gives on the CPU. Skipped without CUDA (run by
scripts/gpu_check.sh on a lent GPU; found there: the Hessian eigensolver and the NTK spectrum
built their vectors on the data's device)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from catapults.curvature.hessian import (
    batch_sharpness,
    hessian_power_step,
    hessian_top_eigenpairs,
    preconditioned_sharpness,
)
from catapults.curvature.spectrum import critical_lr, loss_split, ntk_summary, top_eigenpairs
from catapults.ntk import empirical_ntk, ntk_matvec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def pair():
    """A float64 model on the GPU and its CPU twin, inputs and targets on the CPU."""
    torch.manual_seed(0)
    cpu = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 2)).double()
    gpu = copy.deepcopy(cpu).to("cuda")
    X, y = torch.randn(24, 6, dtype=torch.float64), torch.randn(24, 2, dtype=torch.float64)
    return cpu, gpu, X, y


def close(a, b, tol=1e-8):
    a, b = torch.as_tensor(a).cpu().double(), torch.as_tensor(b).cpu().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300)) < tol


@pytest.mark.parametrize("method", ["auto", "rules", "jacobian", "matvec"])
def test_kernel_with_cpu_data(pair, method):
    cpu, gpu, X, _ = pair
    K = empirical_ntk(gpu, X, method=method)
    assert K.device.type == "cuda"
    assert close(K, empirical_ntk(cpu, X, method="jacobian"))


@pytest.mark.parametrize("product", ["factors", "autograd"])
def test_products_with_cpu_data(pair, product):
    cpu, gpu, X, _ = pair
    V = torch.randn(48, 3, dtype=torch.float64)
    assert close(ntk_matvec(gpu, X, product=product)(V.cuda()), empirical_ntk(cpu, X) @ V)


@pytest.mark.parametrize("method", ["auto", "dense", "lanczos"])
def test_spectrum_and_rates_with_cpu_data(pair, method):
    cpu, gpu, X, y = pair
    vals, _ = top_eigenpairs(gpu, X, 3, method=method)
    ref = torch.linalg.eigvalsh(empirical_ntk(cpu, X)).flip(0)[:3]
    assert close(vals, ref, 1e-7)
    assert abs(critical_lr(gpu, X) / critical_lr(cpu, X) - 1) < 1e-8
    assert close(loss_split(gpu, X, y, 2), loss_split(cpu, X, y, 2))
    s = ntk_summary(gpu, X, y, 3)
    assert close([s.L, s.L_top, s.eta_crit], [*loss_split(cpu, X, y, 1)[:2], critical_lr(cpu, X)])


def test_hessian_functions_with_cpu_data(pair):
    cpu, gpu, X, y = pair
    lam_gpu, v = hessian_top_eigenpairs(gpu, X, y, 2)
    lam_cpu, _ = hessian_top_eigenpairs(cpu, X, y, 2)
    assert close(lam_gpu, lam_cpu, 1e-7)
    theta, _, _ = hessian_power_step(gpu, X, y, v[:, 0].cpu())
    assert abs(theta / float(lam_cpu[0]) - 1) < 1e-7
    est = batch_sharpness(gpu, X, y, 8, max_batches=30)
    ref = batch_sharpness(cpu, X, y, 8, max_batches=30)
    assert abs(est.mean / ref.mean - 1) < 1e-8


def test_preconditioned_sharpness_with_cpu_data(pair):
    cpu, gpu, X, y = pair
    sharp = []
    for model in (cpu, gpu):
        dev = next(model.parameters()).device
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X.to(dev)), y.to(dev)).backward()
        opt.step()
        sharp.append(preconditioned_sharpness(model, X, y, opt))
    assert abs(sharp[1] / sharp[0] - 1) < 1e-6


def test_conv_kernel_is_float32_exact_under_pytorchs_tf32_default():
    """cuDNN runs float32 convolutions in TF32 unless told otherwise (8e-4 relative error in
    this CNN's kernel on an H200); the curvature functions turn it off inside and give it back.
    ``auto`` takes the conv rule on CUDA when its gradients fit."""
    from catapults.curvature.ntk import _auto_method
    from catapults.curvature.ntk_rules.engine import plan

    torch.manual_seed(0)
    cpu = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))
    gpu = copy.deepcopy(cpu).cuda()
    X = torch.randn(64, 3, 16, 16)
    ref = empirical_ntk(cpu.double(), X.double(), method="jacobian")
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        assert _auto_method(gpu, X.cuda(), plan(gpu)) == "rules"
        for method in ("auto", "jacobian"):
            assert close(empirical_ntk(gpu, X, method=method), ref, 1e-5), method
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def test_alignment_and_preconditioned_kernel_with_references_on_the_cpu(pair):
    """A reference AGOP and an inverse preconditioner kept on the CPU meet a model on the GPU."""
    from catapults.curvature.agop import agop, agop_alignment
    from catapults.curvature.stability import adam_inverse_preconditioner, preconditioned_kernel

    cpu, gpu, X, y = pair
    ref = agop(cpu, X) + torch.eye(6, dtype=torch.float64)
    assert abs(agop_alignment(gpu, X, ref) - agop_alignment(cpu, X, ref)) < 1e-10
    opt = torch.optim.Adam(gpu.parameters())
    torch.nn.functional.mse_loss(gpu(X.cuda()), y.cuda()).backward()
    opt.step()
    inv = {k: v.cpu() for k, v in adam_inverse_preconditioner(gpu, opt).items()}
    K = preconditioned_kernel(gpu, X, inverse_preconditioner=inv)
    assert K.device.type == "cuda" and torch.isfinite(K).all()
