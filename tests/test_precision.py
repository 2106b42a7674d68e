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


def _inside() -> tuple[str, str]:
    return CUDNN.conv.fp32_precision, MATMUL.fp32_precision


@pytest.fixture
def tf32_on():
    """TF32 allowed for convolutions and matrix products (PyTorch's cuDNN default, and a
    program that enabled it for products); the previous strings restored afterwards."""
    saved = _inside()
    CUDNN.conv.fp32_precision, MATMUL.fp32_precision = "tf32", "tf32"
    yield
    CUDNN.conv.fp32_precision, MATMUL.fp32_precision = saved


class Recorder(nn.Module):
    """A small MLP that records the precision settings at each forward pass."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
        self.seen: list[tuple[str, str]] = []

    def forward(self, x):
        self.seen.append(_inside())
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
        assert model.seen and set(model.seen) == {("ieee", "ieee")}, name
        assert _inside() == ("tf32", "tf32"), name


def test_the_agop_objects_and_alignment_run_in_full_precision(tf32_on, monkeypatch):
    """The factored AGOP's matrix / square root / eigenvalues and the alignment (what the AGOP
    monitor computes after the AGOP itself) multiply matrices under the guard too."""
    from catapults.curvature import agop as A

    torch.manual_seed(0)
    model, X = Recorder(), torch.randn(8, 4)
    F = A.agop_factor(model, X)
    G = A.agop(model, X)
    seen = []
    mm = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: seen.append(_inside()) or mm(a, b))
    for call in (F.matrix, F.sqrt, F.eigenvalues, lambda: A.alignment(F, G),
                 lambda: A.alignment(G, G, sqrt=True), lambda: A.matrix_sqrt(G)):
        seen.clear()
        call()
        assert set(seen) <= {("ieee", "ieee")}, call
    monkeypatch.undo()
    J = __import__("catapults.ntk", fromlist=["x"]).per_sample_jacobian(model, X)
    assert J.shape == (16, sum(p.numel() for p in model.parameters()))
    assert model.seen[-1] == ("ieee", "ieee")


def test_flags_come_back_when_the_body_raises(tf32_on):
    with pytest.raises(ValueError), full_float32():
        assert _inside() == ("ieee", "ieee")
        raise ValueError
    assert _inside() == ("tf32", "tf32")


def test_nested():
    with full_float32():
        with full_float32():
            assert _inside() == ("ieee", "ieee")
        assert _inside() == ("ieee", "ieee")


STATES = {
    "default": "",
    "medium": "torch.set_float32_matmul_precision('medium')",
    "legacy flags": "torch.backends.cuda.matmul.allow_tf32 = True; "
                    "torch.backends.cudnn.allow_tf32 = True",
    "generic string, matmul ieee": "torch.backends.fp32_precision = 'tf32'; "
                                   "torch.backends.cuda.matmul.fp32_precision = 'ieee'",
}
CHECK = """
import torch
{state}
from catapults.ntk import empirical_ntk
def readable():
    out = []
    for f in (torch.get_float32_matmul_precision, lambda: torch.backends.cuda.matmul.allow_tf32,
              lambda: torch.backends.cudnn.allow_tf32, lambda: torch.backends.fp32_precision,
              lambda: torch.backends.cuda.matmul.fp32_precision,
              lambda: torch.backends.cudnn.conv.fp32_precision,
              lambda: torch.backends.mkldnn.matmul.fp32_precision):
        try:
            out.append(f())
        except RuntimeError:
            out.append('unreadable')
    return out
before = readable()
model = torch.nn.Linear(3, 2)
seen = []
model.register_forward_pre_hook(lambda m, a: seen.append(
    (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision,
     torch.backends.mkldnn.matmul.fp32_precision)))
empirical_ntk(model, torch.randn(4, 3))
assert set(seen) == {{('ieee', 'ieee', 'ieee')}}, seen
assert readable() == before, (before, readable())
print('ok', before)
"""


@pytest.mark.parametrize("state", list(STATES))
def test_every_setting_a_program_can_read_reads_the_same_after(state):
    """Whatever API the program used (``set_float32_matmul_precision``, the legacy flags, the
    per-backend strings, a mix that PyTorch itself refuses to read back in its legacy form):
    inside, full precision; after, every setting that could be read reads the same. Each in a
    fresh process (the settings are global and some cannot be undone within one)."""
    import subprocess
    import sys

    got = subprocess.run([sys.executable, "-c", CHECK.format(state=STATES[state])],
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and got.stdout.startswith("ok"), got.stderr[-2000:]
