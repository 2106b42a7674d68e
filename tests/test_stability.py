"""The critical learning rate of each optimizer (catapults.stability) on quadratic problems,
where the linear-stability edge is exact: a linear model on fixed data has H = H_GN in closed
form, so the optimizer converges at 0.95x the reported rate and diverges at 1.05x."""

import math

import pytest
import torch
from references import reference_critical_lr, vmap_jacobian

from catapults import ntk, stability
from catapults.errors import KernelError


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.randn(24, 2, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(6, 2, dtype=torch.float64)
    return model, X, y


def _train(model, opt, X, y, steps):
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(X), y)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


def _stable(losses):
    return math.isfinite(losses[-1]) and max(losses[-50:]) < 2 * losses[0]


OPTIMIZERS = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "momentum-dampened": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5, dampening=0.3),
    "nesterov": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
    "weight-decay": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5, weight_decay=0.7),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_sgd_family_converges_below_and_diverges_above_the_reported_edge(name):
    model, X, y = _problem()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    eta = stability.critical_lr(model, X, OPTIMIZERS[name](model.parameters(), 1.0))
    for mult, stable in [(0.95, True), (1.05, False)]:
        model.load_state_dict(start)
        losses = _train(model, OPTIMIZERS[name](model.parameters(), mult * eta), X, y, 1500)
        assert _stable(losses) == stable, (name, mult, losses[-1])


def test_gd_edge_is_the_ntk_critical_rate():
    model, X, _ = _problem(1)
    expected = reference_critical_lr(model, X)
    assert stability.critical_lr(model, X) == pytest.approx(expected, rel=1e-10)
    assert stability.critical_lr(model, X, torch.optim.SGD(model.parameters(), lr=1.0)) == \
        pytest.approx(expected, rel=1e-10)
    assert ntk.critical_lr(model, X) == pytest.approx(expected, rel=1e-10)
    edge = stability.optimizer_edge(torch.optim.SGD(model.parameters(), lr=1, momentum=0.9))
    assert edge["kind"] == "momentum" and edge["factor"] == pytest.approx(1.9)


def _adam_state(model, X, y, steps=30):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-3)
    _train(model, opt, X, y, steps)
    return opt


def test_preconditioned_kernel_against_a_scaled_jacobian():
    model, X, y = _problem(2)
    opt = _adam_state(model, X, y)
    J = vmap_jacobian(model, X)  # columns: weight then bias
    pinv = []
    for p in model.parameters():
        st = opt.state[p]
        v_hat = st["exp_avg_sq"] / (1 - 0.99 ** float(st["step"]))
        pinv.append((1 / (v_hat.sqrt() + 1e-3)).reshape(-1))
    K_ref = J @ torch.diag(torch.cat(pinv)) @ J.T
    K = stability.preconditioned_kernel(model, X, opt)
    assert torch.allclose(K, K_ref, rtol=1e-10, atol=1e-10 * K_ref.abs().max())
    assert torch.equal(K, K.T)


def test_adam_with_a_frozen_preconditioner_has_the_reported_edge():
    """Adam's linearised dynamics with P frozen at its current value: m <- b1 m + (1-b1) g,
    theta <- theta - eta P^-1 m (after many steps: no bias correction)."""
    model, X, y = _problem(3)
    opt = _adam_state(model, X, y)
    eta = stability.critical_lr(model, X, opt)
    assert stability.optimizer_edge(opt)["factor"] == pytest.approx(1.9 / 0.1)
    pinv = [1 / ((opt.state[p]["exp_avg_sq"] / (1 - 0.99 ** float(opt.state[p]["step"])))
                 .sqrt() + 1e-3) for p in model.parameters()]
    start = [p.detach().clone() for p in model.parameters()]
    for mult, stable in [(0.95, True), (1.05, False)]:
        with torch.no_grad():
            for p, s in zip(model.parameters(), start):
                p.copy_(s)
        m = [torch.zeros_like(p) for p in model.parameters()]
        losses = []
        for _ in range(3000):
            loss = torch.nn.functional.mse_loss(model(X), y)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
            grads = torch.autograd.grad(loss, list(model.parameters()))
            with torch.no_grad():
                for p, g, mi, pi in zip(model.parameters(), grads, m, pinv):
                    mi.mul_(0.9).add_(g, alpha=0.1)
                    p.sub_(mult * eta * pi * mi)
        assert _stable(losses) == stable, (mult, losses[-1])


def test_unknown_optimizer_and_missing_parameters_are_refused():
    model, X, _ = _problem()
    with pytest.raises(KernelError, match="RMSprop"):
        stability.critical_lr(model, X, torch.optim.RMSprop(model.parameters()))
    other = torch.nn.Linear(6, 2, dtype=torch.float64)
    opt = torch.optim.Adam(other.parameters())
    with pytest.raises(KernelError, match="not in the optimizer"):
        stability.preconditioned_kernel(model, X, opt)
