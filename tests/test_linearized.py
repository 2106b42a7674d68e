"""The network linearised at its initialisation (catapults.models.Linearized): the frozen-kernel
null of the SGD-spike claims. Checked against float64 references (tests/references.py)."""

import copy

import pytest
import torch
from references import reference_critical_lr, reference_kernel, vmap_jacobian

from catapults import run
from catapults.config import config_from_dict
from catapults.curvature.ntk_rules.generic import generic_ntk
from catapults.models import Linearized, build_model
from catapults.ntk import critical_lr, empirical_ntk, loss_split
from catapults.runs import load_run_model
from helpers import small_config

SPEC = {"arch": "mlp", "in_dim": 6, "out_dim": 2, "seed": 3, "width": 32, "depth": 3,
        "activation": "tanh", "bias": True, "dtype": "float64"}


def _pair():
    return build_model(SPEC), build_model({**SPEC, "linearize": True})


def test_outputs_are_the_first_order_taylor_expansion():
    base, lin = _pair()
    X = torch.randn(7, 6, dtype=torch.float64)
    assert torch.allclose(lin(X), base(X), rtol=0, atol=1e-12)  # at theta_0
    J = vmap_jacobian(base, X)  # (n*c, p), the parameters in named_parameters order
    names = [n for n, _ in base.named_parameters()]  # the column order of J
    delta = [0.05 * torch.randn_like(p) for _, p in base.named_parameters()]
    with torch.no_grad():
        for name, d in zip(names, delta):
            lin.theta[name.replace(".", "__")].add_(d)
    expected = base(X).reshape(-1) + J @ torch.cat([d.reshape(-1) for d in delta])
    assert torch.allclose(lin(X).reshape(-1), expected, rtol=1e-10, atol=1e-10)


def test_kernel_is_the_initial_kernel_and_stays_frozen_under_training():
    base, lin = _pair()
    X = torch.randn(9, 6, dtype=torch.float64)
    y = torch.randn(9, 2, dtype=torch.float64)
    K0 = reference_kernel(base, X, how="vmap")
    opt = torch.optim.SGD(lin.parameters(), lr=0.5 * critical_lr(lin, X))
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(lin(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in lin.base.parameters())  # theta_0 is never trained
    for K in (empirical_ntk(lin, X),  # through the tangent module (the fast path on base)
              generic_ntk(lin, X, "full", 64, 2e9),  # through f_lin's own Jacobian
              reference_kernel(lin, X, how="vmap")):
        assert torch.allclose(K, K0, rtol=1e-10, atol=1e-10 * K0.abs().max())
    K, out = empirical_ntk(lin, X, return_outputs=True)
    assert torch.allclose(out, lin(X), atol=1e-12)  # the linearised model's outputs, not base's
    assert critical_lr(lin, X) == pytest.approx(reference_critical_lr(base, X), rel=1e-8)
    L, top, rest = loss_split(lin, X, y, 2)
    with torch.no_grad():
        assert L == pytest.approx(float(torch.nn.functional.mse_loss(lin(X), y)), rel=1e-8)
    assert top + rest == pytest.approx(L, rel=1e-8)


@pytest.mark.parametrize("multiple,converges", [(0.95, True), (1.05, False)])
def test_gd_on_the_linearised_network_has_the_exact_critical_rate(multiple, converges):
    """Linear in theta: GD on the mean MSE converges below n*c/lambda_max(K) and diverges above,
    and no catapult can bring it back."""
    _, lin = _pair()
    X = torch.randn(12, 6, dtype=torch.float64)
    y = torch.randn(12, 2, dtype=torch.float64)
    opt = torch.optim.SGD(lin.parameters(), lr=multiple * reference_critical_lr(lin.base, X))
    losses = []
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(lin(X), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    if converges:
        assert losses[-1] < losses[0]
    else:
        assert losses[-1] > 1e3 * losses[0]


def test_config_run_and_checkpoint_rebuild(tmp_path):
    cfg = small_config(model={"linearize": True},
                       train={"steps": 12, "schedule": {"kind": "critical", "milestones": [0],
                                                        "values": [0.8]}},
                       monitor={"ntk": {"enabled": True, "every": 4, "k": 2}})
    res = run(config_from_dict(cfg), out_dir=tmp_path / "r")
    assert res.status == "completed" and isinstance(res.model, Linearized)
    lams = [r["ntk/lambda"][0] for r in res.history if "ntk/lambda" in r]
    assert len(lams) >= 3 and max(lams) == pytest.approx(min(lams), rel=1e-5)  # frozen
    model, _ = load_run_model(tmp_path / "r")
    assert isinstance(model, Linearized)
    X = torch.randn(5, 10)
    assert torch.allclose(model(X), res.model.cpu()(X), atol=1e-6)


def test_device_and_dtype_moves_keep_the_expansion_point():
    _, lin = _pair()
    moved = copy.deepcopy(lin).float()
    X = torch.randn(4, 6)
    assert torch.allclose(moved(X), lin(X.double()).float(), atol=1e-5)
