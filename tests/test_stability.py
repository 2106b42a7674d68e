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


def test_preconditioned_kernel_from_a_remembered_inverse_preconditioner():
    """P^-1 read at one moment (adam_inverse_preconditioner) gives that moment's kernel after
    Adam has stepped on (a copy, not a view of the state); one of optimizer / P^-1, not both."""
    model, X, y = _problem(4)
    opt = _adam_state(model, X, y)
    K_now = stability.preconditioned_kernel(model, X, opt)
    inv = stability.adam_inverse_preconditioner(model, opt)
    assert torch.equal(stability.preconditioned_kernel(model, X, inverse_preconditioner=inv),
                       K_now)
    weights = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, X, y, 5)  # v changes (and the parameters, put back below)
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights):
            p.copy_(w)
    assert not torch.allclose(stability.preconditioned_kernel(model, X, opt), K_now)
    assert torch.equal(stability.preconditioned_kernel(model, X, inverse_preconditioner=inv),
                       K_now)
    for kwargs in ({}, {"optimizer": opt, "inverse_preconditioner": inv}):
        with pytest.raises(KernelError, match="one of the two"):
            stability.preconditioned_kernel(model, X, **kwargs)
    with pytest.raises(KernelError, match="not Adam"):
        stability.adam_inverse_preconditioner(model, torch.optim.SGD(model.parameters(), lr=1))


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
    opt = _adam_state(other, X[:, :6], torch.zeros(len(X), 2, dtype=torch.float64), steps=1)
    with pytest.raises(KernelError, match="not in the optimizer"):
        stability.preconditioned_kernel(model, X, opt)


def test_adam_before_its_first_step_has_no_edge_and_says_so():
    """No second moments yet: critical_lr, the preconditioned kernel and the preconditioned
    sharpness refuse with one message; after one step they answer."""
    model, X, y = _problem(3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert not stability.adam_started(opt)
    for call in (lambda: stability.critical_lr(model, X, opt),
                 lambda: stability.preconditioned_kernel(model, X, opt),
                 lambda: stability.preconditioned_sharpness(model, X, y, opt)):
        with pytest.raises(KernelError, match="has not taken a step yet: it has no second"):
            call()
    _train(model, opt, X, y, 1)
    assert stability.adam_started(opt) and math.isfinite(stability.critical_lr(model, X, opt))


# ---- the true Hessian, preconditioned sharpness, batch sharpness ------------------------------
from itertools import combinations  # noqa: E402

from references import dense_mse_hessian  # noqa: E402

from catapults.models import MLP  # noqa: E402


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_hessian_top_eigenpairs_against_the_dense_hessian(activation):
    torch.manual_seed(5)
    model = MLP(4, 2, width=12, depth=2, activation=activation, bias=True, seed=5,
                dtype=torch.float64)
    X = torch.randn(20, 4, dtype=torch.float64)
    y = 3 * torch.randn(20, 2, dtype=torch.float64)  # large residuals: H differs from H_GN
    H = dense_mse_hessian(model, X, y)
    ref_vals, ref_vecs = torch.linalg.eigh(H)
    vals, vecs = stability.hessian_top_eigenpairs(model, X, y, 3)
    assert torch.allclose(vals, ref_vals.flip(0)[:3], rtol=1e-7, atol=1e-9)
    for i in range(3):
        assert abs(float(vecs[:, i] @ ref_vecs[:, -1 - i])) == pytest.approx(1.0, abs=1e-5)
    gn = 2 * float(torch.linalg.eigvalsh(ntk.empirical_ntk(model, X))[-1]) / y.numel()
    assert abs(float(vals[0]) - gn) > 1e-6  # the residual term of a nonlinear net is there


def test_hessian_equals_gauss_newton_for_a_linear_model():
    model, X, y = _problem(4)
    vals, _ = stability.hessian_top_eigenpairs(model, X, y, 1)
    gn = 2 * float(torch.linalg.eigvalsh(ntk.empirical_ntk(model, X))[-1]) / y.numel()
    assert float(vals[0]) == pytest.approx(gn, rel=1e-8)


def test_preconditioned_sharpness_against_the_dense_hessian():
    torch.manual_seed(6)
    model = MLP(4, 1, width=10, depth=2, activation="tanh", seed=6, dtype=torch.float64)
    X = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, 1, dtype=torch.float64)
    opt = _adam_state(model, X, y, steps=20)
    d = torch.cat([(1 / ((opt.state[p]["exp_avg_sq"] / (1 - 0.99 ** float(
        opt.state[p]["step"]))).sqrt() + 1e-3)).reshape(-1) for p in model.parameters()]).sqrt()
    H = dense_mse_hessian(model, X, y)
    expected = float(torch.linalg.eigvalsh(d[:, None] * H * d[None, :])[-1])
    assert stability.preconditioned_sharpness(model, X, y, opt) == pytest.approx(expected,
                                                                                 rel=1e-6)


def test_batch_sharpness_against_exact_enumeration():
    """All 28 batches of 2 from 8 points, against the Monte-Carlo estimate and its interval."""
    torch.manual_seed(7)
    model = MLP(3, 1, width=16, depth=2, activation="tanh", seed=7, dtype=torch.float64)
    X = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randn(8, 1, dtype=torch.float64)
    exact = []
    for idx in combinations(range(8), 2):
        Xb, yb = X[list(idx)], y[list(idx)]
        H = dense_mse_hessian(model, Xb, yb)
        loss = torch.nn.functional.mse_loss(model(Xb), yb)
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, model.parameters())])
        exact.append(float(g @ H @ g / (g @ g)))
    truth = sum(exact) / len(exact)
    est = stability.batch_sharpness(model, X, y, 2, rel_se=0.01, max_batches=4000,
                                    generator=torch.Generator().manual_seed(0))
    assert abs(est.mean - truth) <= 4 * est.se
    assert est.interval[0] < est.mean < est.interval[1] and est.batches >= 20
    for bad in (9, 0, 2.5, True):
        with pytest.raises(KernelError, match="batch_size"):
            stability.batch_sharpness(model, X, y, bad)


@pytest.mark.parametrize("optimizer,extra,factor", [
    ("gd", {}, 1.0), ("momentum", {"momentum": 0.9}, 1.9),
    ("momentum", {"momentum": 0.5, "nesterov": True}, 1.5 / 2.0)])
def test_the_critical_schedule_uses_the_optimizers_own_edge(tmp_path, optimizer, extra, factor):
    from catapults import run
    from catapults.config import config_from_dict
    from catapults.data import make_dataset
    from helpers import small_config

    cfg = small_config(model={"width": 16},
                       train={"optimizer": optimizer, "steps": 2, **extra,
                              "schedule": {"kind": "critical", "milestones": [0],
                                           "values": [0.5]}})
    config = config_from_dict(cfg)
    res = run(config, out_dir=tmp_path / "r")
    data = make_dataset(config.data)
    from catapults.models import build_model
    from catapults.runs import model_spec

    fresh = build_model(model_spec(config, data))  # the run's initial network
    gd_edge = reference_critical_lr(fresh, data.X_train)
    assert res.history[0]["lr"] == pytest.approx(0.5 * factor * gd_edge, rel=1e-4)


def test_top_algebraic_of_an_indefinite_operator_needs_no_shift():
    """The solver orders Ritz values algebraically: with no shift it finds the top of an
    operator whose most negative eigenvalue is 4x larger in magnitude, as the shifted one does."""
    from catapults.curvature.hessian import _top_algebraic

    g = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    vals = torch.cat([torch.tensor([-12.0, -11.0]), torch.linspace(-2, 2.5, 296),
                      torch.tensor([2.9, 3.0])]).double()
    A = (Q * vals) @ Q.T
    for shift in (0.0, None):
        top, vecs = _top_algebraic(A.__matmul__, 300, 2, device=torch.device("cpu"),
                                   shift=shift, tol=1e-10)
        assert torch.allclose(top, torch.tensor([3.0, 2.9], dtype=torch.float64), atol=1e-8)
        assert (A @ vecs - vecs * top).norm() < 1e-7


def test_power_step_against_the_dense_hessian():
    """theta = v'Hv, the residual |Hv - theta v|/|theta| and v_next = Hv/|Hv| of the dense
    float64 Hessian; repeated steps from a fresh vector converge to lambda_max."""
    torch.manual_seed(1)
    model = MLP(3, 1, width=10, depth=2, activation="tanh", seed=1).double()
    X = torch.randn(30, 3, dtype=torch.float64)
    y = torch.randn(30, 1, dtype=torch.float64)
    H = dense_mse_hessian(model, X, y)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    v = v / v.norm()
    theta, res, nxt = stability.hessian_power_step(model, X, y, v)
    Hv = H @ v
    assert theta == pytest.approx(float(v @ Hv), rel=1e-10)
    assert res == pytest.approx(float((Hv - theta * v).norm()) / abs(theta), rel=1e-8)
    assert torch.allclose(nxt, Hv / Hv.norm(), atol=1e-10)
    evals = torch.linalg.eigvalsh(H)
    for _ in range(300):
        theta, res, v = stability.hessian_power_step(model, X, y, v)
    assert abs(evals[-1]) > abs(evals[0])  # the power step follows the largest magnitude
    assert theta == pytest.approx(float(evals[-1]), rel=1e-6)


@pytest.mark.parametrize("classes,activation", [(1, "tanh"), (3, "tanh"), (3, "relu")])
def test_cross_entropy_hessian_against_the_dense_hessian(classes, activation):
    """The Hessian form holds for any loss: the top eigenpairs, the power step and batch
    sharpness of the cross-entropy loss (logistic for one output, softmax for three) against
    the dense float64 Hessian of the loss written out here."""
    torch.manual_seed(2)
    model = MLP(3, classes, width=8, depth=2, activation=activation, seed=2).double()
    X = torch.randn(24, 3, dtype=torch.float64)
    if classes == 1:
        y = torch.where(torch.randn(24, 1) > 0, 1.0, -1.0).double()

        def ce(out, t):
            return torch.log1p(torch.exp(-t * out)).mean()
    else:
        y = torch.nn.functional.one_hot(torch.randint(0, 3, (24,)), 3).double()

        def ce(out, t):
            return -(t * torch.log_softmax(out, 1)).sum(1).mean()
    H = dense_mse_hessian(model, X, y, loss_of=ce)
    evals = torch.linalg.eigvalsh(H)
    vals, vecs = stability.hessian_top_eigenpairs(model, X, y, 2, loss="cross_entropy")
    assert torch.allclose(vals, evals.flip(0)[:2], rtol=1e-7, atol=1e-10)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    theta, _, _ = stability.hessian_power_step(model, X, y, v, loss="cross_entropy")
    v = v / v.norm()
    assert theta == pytest.approx(float(v @ H @ v), rel=1e-9)
    with pytest.raises(KernelError, match="loss must be one of 'mse', 'cross_entropy'"):
        stability.hessian_top_eigenpairs(model, X, y, 1, loss="hinge")


def test_the_ntk_form_refuses_another_loss_and_says_which_form_applies():
    model, X, _ = _problem(1)
    with pytest.raises(KernelError, match="holds for the mean-MSE loss only; for loss "
                                          "'cross_entropy' only the Hessian form applies"):
        stability.critical_lr(model, X, loss="cross_entropy")


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_hvp_through_a_retained_graph_against_the_dense_hessian(loss):
    """hvp_operator(reuse_graph=True) (the eigensolver's products) and the default
    forward-over-reverse products both equal the dense float64 Hessian times a vector and a
    block, repeatedly (the graph is kept between calls)."""
    from catapults.curvature.hessian import hvp_operator

    seed = int(torch.randint(0, 10**6, ()))
    torch.manual_seed(seed)
    model = MLP(3, 3, width=8, depth=2, activation="tanh", bias=True, seed=seed,
                dtype=torch.float64)
    X = torch.randn(10, 3, dtype=torch.float64)
    if loss == "mse":
        y = torch.randn(10, 3, dtype=torch.float64)
        H = dense_mse_hessian(model, X, y)
    else:
        y = torch.nn.functional.one_hot(torch.randint(0, 3, (10,)), 3).double()
        H = dense_mse_hessian(model, X, y, loss_of=lambda out, t: -(
            t * torch.log_softmax(out, 1)).sum(1).mean())
    p = H.shape[0]
    for reuse in (True, False):
        mv, q = hvp_operator(model, X, y, loss=loss, reuse_graph=reuse)
        assert q == p
        for V in (torch.randn(p, dtype=torch.float64), torch.randn(p, 4, dtype=torch.float64),
                  torch.randn(p, 1, dtype=torch.float64)):
            torch.testing.assert_close(mv(V), H @ V, rtol=1e-9, atol=1e-11)


def test_float32_hessian_solve_reaches_the_products_accuracy():
    """A float32 model: the default tolerance and floor stop the solve, and its eigenvalues
    match the dense float64 Hessian's to the accuracy of float32 products."""
    torch.manual_seed(9)
    model = MLP(5, 1, width=40, depth=2, activation="tanh", seed=9)
    X = torch.randn(60, 5)
    y = torch.randn(60, 1)
    H = dense_mse_hessian(model.double(), X.double(), y.double())
    model.float()
    ref = torch.linalg.eigvalsh(H).flip(0)[:3]
    vals, vecs = stability.hessian_top_eigenpairs(model, X, y, 3)
    assert torch.allclose(vals.double(), ref, rtol=1e-4, atol=1e-6 * float(ref[0]))
    res = (H @ vecs.double() - vecs.double() * vals.double()).norm(dim=0)
    assert float(res.max()) < 1e-4 * float(ref[0])
